"""A roll holds the host's lock and draining flag as a lease renewed before each step (issue 23, item 8).

Cut off mid-host, a roll must free the host within the running step's bound, not after one TTL for the whole
host: the helper's renewal is token-checked and extends only our own hold, a lease nobody renews lapses on time,
and rolling_update.yml renews before each long step for at least that step's bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest
import redis
import yaml

from captcha_fleet.contract.keys import Keys
from captcha_fleet.controller.hosts.lock import RedisHostLock
from captcha_fleet.local_servers.polling import wait_until
from tests.redis_acl_rig import acl_refusals, reset_acl_log, run_helper
from tests.test_fleet_helper import helper

REPO = Path(__file__).resolve().parent.parent
PLAYBOOK = REPO / "playbooks" / "rolling_update.yml"
DEFAULTS = REPO / "roles" / "worker" / "defaults" / "main.yml"


def test_renew_extends_our_own_hold_and_the_flag(tmp_path: Path, redis_url: str, r: redis.Redis, keys: Keys) -> None:
    lock, flag = keys.host_lock("h1"), keys.host_draining("h1")
    rc, _, _ = helper(tmp_path, redis_url, keys, "lock", "acquire", "--host", "h1", "--token", "rolling_update:h1",
                      "--ttl", "5")  # fmt: skip
    assert rc == 0 and r.pttl(lock) <= 5000
    rc, answer, _ = helper(tmp_path, redis_url, keys, "lock", "renew", "--host", "h1", "--token", "rolling_update:h1",
                           "--ttl", "200", "--drain")  # fmt: skip
    assert rc == 0 and answer["renewed"] is True
    assert 5000 < r.pttl(lock) <= 200_000 and r.get(lock) == b"rolling_update:h1"
    assert 5000 < r.pttl(flag) <= 200_000, "--drain holds the draining flag for the same lease"


def test_renew_refuses_a_foreign_token_and_touches_nothing(
    tmp_path: Path, redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    """A roll whose lease lapsed and was taken by a scale run must not extend it, nor drain the host again."""
    actuator = RedisHostLock(r, keys, token="ctl")
    assert actuator.acquire(["h1"], ttl_s=30) == {"h1"}
    rc, answer, _ = helper(tmp_path, redis_url, keys, "lock", "renew", "--host", "h1", "--token", "rolling_update:h1",
                           "--ttl", "600", "--drain")  # fmt: skip
    assert rc == 1 and answer == {"host": "h1", "renewed": False, "holder": "actuator:ctl"}
    assert r.get(keys.host_lock("h1")) == b"actuator:ctl" and r.pttl(keys.host_lock("h1")) <= 30_000
    assert not r.exists(keys.host_draining("h1"))
    # nobody holds it: a renewal is no way to take a host either
    actuator.release(["h1"])
    rc, answer, _ = helper(tmp_path, redis_url, keys, "lock", "renew", "--host", "h1", "--token", "rolling_update:h1",
                           "--ttl", "600")  # fmt: skip
    assert rc == 1 and answer["renewed"] is False and not r.exists(keys.host_lock("h1"))


def test_a_lease_nobody_renews_lapses_within_its_ttl(
    tmp_path: Path, redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    """A roll cut off after taking a 1 s lease: lock and flag are gone within it, the controller takes the host,
    and the cut-off roll (were it alive) could no longer renew."""
    token = ["--host", "h1", "--token", "rolling_update:h1"]
    assert helper(tmp_path, redis_url, keys, "lock", "acquire", *token, "--ttl", "1")[0] == 0
    assert helper(tmp_path, redis_url, keys, "drain", "set", "--host", "h1", "--ttl", "1")[0] == 0
    assert r.pttl(keys.host_lock("h1")) <= 1000 and r.pttl(keys.host_draining("h1")) <= 1000
    assert wait_until(lambda: not r.exists(keys.host_lock("h1"), keys.host_draining("h1")), timeout_s=3)
    assert RedisHostLock(r, keys, token="ctl").acquire(["h1"], ttl_s=30) == {"h1"}, "the controller scales it again"
    rc, answer, _ = helper(tmp_path, redis_url, keys, "lock", "renew", *token, "--ttl", "60", "--drain")
    assert rc == 1 and answer["holder"] == "actuator:ctl"
    assert not r.exists(keys.host_draining("h1"))


def test_the_operators_way_out_frees_a_host_a_dead_roll_left(
    tmp_path: Path, redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    """docs/operations.md: `drain clear` and `lock release` with the roll's token, at once; never a scale run's."""
    token = ["--host", "h1", "--token", "rolling_update:h1"]
    assert helper(tmp_path, redis_url, keys, "lock", "acquire", *token, "--ttl", "300")[0] == 0
    assert helper(tmp_path, redis_url, keys, "drain", "set", "--host", "h1", "--ttl", "300")[0] == 0
    assert helper(tmp_path, redis_url, keys, "drain", "clear", "--host", "h1")[0] == 0
    rc, answer, _ = helper(tmp_path, redis_url, keys, "lock", "release", *token)
    assert rc == 0 and answer["released"] is True
    assert not r.exists(keys.host_lock("h1"), keys.host_draining("h1"))
    actuator = RedisHostLock(r, keys, token="ctl")
    assert actuator.acquire(["h1"], ttl_s=30) == {"h1"}
    rc, answer, _ = helper(tmp_path, redis_url, keys, "lock", "release", *token)
    assert rc == 0 and answer["released"] is False and r.get(keys.host_lock("h1")) == b"actuator:ctl"


@pytest.mark.parametrize("ttl", ["0", "-5", "nan", "inf", "soon"])
def test_a_bad_lease_ttl_is_refused_with_its_name(tmp_path: Path, redis_url: str, r: redis.Redis, keys: Keys,
                                                  ttl: str) -> None:  # fmt: skip
    import subprocess
    import sys

    from tests.test_fleet_helper import HELPER

    config, env = tmp_path / "fleet.yml", tmp_path / "worker.env"
    config.write_text(f"key_prefix: {keys.prefix}\n", encoding="utf-8")
    env.write_text(f"REDIS_URL='{redis_url}'\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(HELPER), "--config", str(config), "--env-file", str(env), "lock", "renew", "--host", "h1",
         "--token", "t", "--ttl", ttl],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "--ttl" in proc.stderr
    assert r.keys(f"{keys.prefix}:*") == []


def test_the_worker_user_may_renew_a_lease(acl_server: Any, admin: redis.Redis, tmp_path: Path) -> None:
    """The roll's helper runs with the worker's Redis user: its renewal and the flag it extends pass the ACL."""
    keys = Keys("aclfleet")
    reset_acl_log(admin)
    lock = ["--host", "h1", "--token", "rolling_update:h1"]
    assert run_helper(tmp_path, acl_server, "worker", "lock", "acquire", *lock, "--ttl", "5", "--wait", "1")[0] == 0
    rc, answer = run_helper(tmp_path, acl_server, "worker", "lock", "renew", *lock, "--ttl", "90", "--drain")
    assert rc == 0 and answer["renewed"] is True, answer
    assert 5000 < admin.pttl(keys.host_lock("h1")) <= 90_000 and admin.pttl(keys.host_draining("h1")) > 5000
    assert acl_refusals(admin) == []


# --- rolling_update.yml renews before each long step ---------------------------------------------------------
def roll_block() -> list[dict[str, Any]]:
    play = yaml.safe_load(PLAYBOOK.read_text(encoding="utf-8"))[0]
    block = next(t for t in play["tasks"] if "block" in t)
    return list(block["block"])


def render(expr: object, **extra: Any) -> int:
    """A lease or timeout expression evaluated with the role's defaults and the play's vars, as Ansible would."""
    defaults = yaml.safe_load(DEFAULTS.read_text(encoding="utf-8"))
    play_vars = yaml.safe_load(PLAYBOOK.read_text(encoding="utf-8"))[0]["vars"]
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    context: dict[str, Any] = {**defaults, **play_vars, **extra}
    text = str(expr)
    for _ in range(5):  # a var that names another var
        if "{{" not in text:
            break
        text = env.from_string(text).render(context)
    return int(text.strip())


def uses(task: dict[str, Any], name: str) -> bool:
    return str(task.get("ansible.builtin.include_role", {}).get("tasks_from", "")) == name


def helper_timeout(task: dict[str, Any]) -> object:
    args = task["vars"]["worker_helper_args"]
    return args[args.index("--timeout") + 1]


def lease_before(tasks: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The task just before the step named ``name`` must be a lease renewal; return it."""
    index = next(i for i, t in enumerate(tasks) if t["name"] == name)
    lease = tasks[index - 1]
    assert uses(lease, "lease.yml"), f"no lease renewed right before {name!r}: {lease['name']!r}"
    assert lease["vars"]["worker_lease_token"] == "{{ rolling_lock_token }}"
    assert lease.get("when") == tasks[index].get("when"), f"the lease of {name!r} runs exactly when the step does"
    return lease


def test_each_long_step_is_preceded_by_a_lease_that_covers_it() -> None:
    tasks = roll_block()
    by_name = {t["name"]: t for t in tasks}
    margin = render("{{ worker_roll_lease_margin_s }}")
    steps = {  # step -> its own bound in seconds
        "Wait until the host's workers hold no task (or the deadline)": render(
            helper_timeout(by_name["Wait until the host's workers hold no task (or the deadline)"])),
        "Wait for the new heartbeats": render(helper_timeout(by_name["Wait for the new heartbeats"])),
        "Start the new release's worker on a host that runs none (no slots; it claims nothing)": 30 + render(
            helper_timeout(by_name["Start the new release's worker on a host that runs none (no slots; it claims "
                                   "nothing)"])),
        "Self-check the new release (config, Redis, API key; no paid solve)": 2 * render(
            "{{ rolling_selfcheck_timeout_s }}"),
        "Solve a canary task (a paid solve on the shared queue)": render(
            helper_timeout(by_name["Solve a canary task (a paid solve on the shared queue)"])),
        "Record the release as gated": 0,
    }  # fmt: skip
    for step, bound in steps.items():
        ttl = render(lease_before(tasks, step)["vars"]["worker_lease_ttl_s"])
        assert ttl >= bound + margin, f"{step!r}: lease {ttl} s < its bound {bound} s + margin"
    # the selfcheck runs with the timeout its lease counts on
    assert "rolling_selfcheck_timeout_s" in str(by_name[next(s for s in steps if s.startswith("Self-check"))]["vars"])
    restart = lease_before(tasks, "Switch the current link to the new release")
    names = [t["name"] for t in tasks]
    assert names.index("Restart the workers on the new release") == names.index(restart["name"]) + 2
    for count in range(4):  # the instances stop one after another
        instances = [str(i) for i in range(count)]
        ttl = render(restart["vars"]["worker_lease_ttl_s"], worker_instances=instances)
        stop = render("{{ worker_stop_timeout_s }}")
        assert ttl >= stop * max(count, 1) + margin


def test_the_flag_is_leased_while_the_host_drains_and_never_after() -> None:
    tasks = roll_block()
    names = [t["name"] for t in tasks]
    cleared = names.index("Clear the draining flag")
    for i, task in enumerate(tasks):
        if uses(task, "lease.yml"):
            drains = bool(task["vars"].get("worker_lease_drain"))
            assert drains == (i < cleared), f"{task['name']!r}: the flag is renewed only until the restart clears it"


def test_no_step_holds_the_host_for_the_whole_roll() -> None:
    """The one TTL for the whole host (worker_drain_flag_ttl_s, 450 s) is gone from the roll; with the defaults
    every lease is shorter than it (the worst case is written out in roles/worker/defaults/main.yml)."""
    text = PLAYBOOK.read_text(encoding="utf-8")
    assert "worker_drain_flag_ttl_s" not in text
    whole = render("{{ worker_drain_flag_ttl_s }}")
    play_vars = yaml.safe_load(text)[0]["vars"]
    leases = {k: render(v, worker_instances=["1"]) for k, v in play_vars.items() if k.startswith("rolling_lease_")}
    assert leases and max(leases.values()) < whole, leases
    tasks = roll_block()
    take = next(
        t for t in tasks if uses(t, "helper.yml") and t["vars"]["worker_helper_args"][:2] == ["lock", "acquire"]
    )
    args = take["vars"]["worker_helper_args"]
    assert render(args[args.index("--ttl") + 1]) == leases["rolling_lease_drain_s"]
