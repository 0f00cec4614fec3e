"""End to end, over real SSH: site.yml, scale.yml, the ansible-runner actuator, rolling updates, a lost host.

One lab of three hosts for the module, provisioned once by the first test; the tests run in file order and
build on each other (provision -> scale -> actuator -> bad release -> host cut off). The controller scaling
across hosts and a good roll under load are tested as users run them, deployed by site.yml
(test_fleet_deployed_lab.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from captcha_fleet.contract.keys import Keys
from captcha_fleet.controller.actuators.ansible import AnsibleActuator, AnsibleActuatorConfig, applier_answer
from lab.env import LabEnv, PlaybookResult, snapshot_source
from tests.lab.helpers import Load, heartbeat_instances, wait_for, worker_available

pytestmark = [pytest.mark.lab, pytest.mark.slow]
LAB_HOSTS = 3
LAB_SANDBOX = True
CANARY = {"worker_canary_method": "base64", "worker_canary_params": {"body": "aGVsbG8="}}

_state: dict[str, Any] = {}


def need_worker() -> None:
    reason = worker_available()
    if reason:
        pytest.skip(reason)


def need_provisioned() -> None:
    if not _state.get("provisioned"):
        pytest.skip("site.yml did not provision the lab (see test_site_provisions_from_nothing_and_is_idempotent)")


def programs(env: LabEnv, host: str) -> dict[str, str]:
    """Program name -> state of the host's supervisord."""
    return {name: state for name, (state, _pid) in env.programs(host).items()}


def program_pid(env: LabEnv, host: str, program: str) -> str | None:
    """The pid supervisord shows for a running program (None when it is not running)."""
    state, pid = env.programs(host).get(program, ("", 0))
    return str(pid) if state == "RUNNING" else None


def assert_no_secret(env: LabEnv, result: PlaybookResult) -> None:
    blob = json.dumps(result.events) + result.stdout
    assert env.redis.password not in blob
    assert env.secret_key not in blob


@pytest.fixture()
def actuator(lab: LabEnv) -> Iterator[AnsibleActuator]:
    running = {h: heartbeat_instances(lab, h) for h in lab.hosts}
    found: list[str] = []

    def inspect(private: Path) -> None:
        for path in private.rglob("*"):
            if path.is_file():
                text = path.read_text(errors="replace")
                if lab.redis.password in text or lab.secret_key in text:
                    found.append(str(path.relative_to(private)))

    config = AnsibleActuatorConfig(
        inventory=lab.inventory,
        data_dir=lab.lab.dir / "runner",
        max_services_per_host=4,
        timeout_s=60,
        retry_unreachable_s=5.0,
    )
    act = AnsibleActuator(config, running={h: frozenset(v) for h, v in running.items()}, inspect_artifacts=inspect)
    yield act
    act.close()
    assert found == [], f"secrets in runner artifacts: {found}"
    assert not any((lab.lab.dir / "runner").iterdir()), "runner data dirs were not removed"


# --- provisioning -----------------------------------------------------------------------------------
def test_site_provisions_from_nothing_and_is_idempotent(lab: LabEnv) -> None:
    first = lab.run_playbook("site.yml")
    assert first.status == "successful", first.stdout[-3000:]
    assert first.total("failures") == 0 and first.total("dark") == 0
    assert_no_secret(lab, first)
    for host in lab.lab.hosts:
        root = Path(host.root)
        env_file = root / "etc" / "captcha-fleet" / "worker.env"
        assert env_file.stat().st_mode & 0o777 == 0o600
        assert (root / "opt" / "captcha-fleet" / "current" / "venv" / "bin" / "captcha-fleet").exists()
        assert "captcha-worker-1" in programs(lab, host.name)
    # idempotent: a second run changes nothing (on one host: the hosts are provisioned alike, and the run-once
    # steps on the control machine run whatever the limit)
    second = lab.run_playbook("site.yml", limit=lab.hosts[-1])
    assert second.status == "successful", second.stdout[-3000:]
    assert second.total("changed") == 0, {k: v for k, v in second.stats.items() if k == "changed"}
    _state["provisioned"] = True
    if worker_available() is None:
        for name in lab.hosts:
            wait_for(lambda h=name: heartbeat_instances(lab, h) == {"1"}, 30, f"heartbeat of {name}:1")


def test_scale_playbook_starts_and_stops_specific_instances(lab: LabEnv) -> None:
    need_provisioned()
    host = lab.hosts[0]
    up = lab.run_playbook("scale.yml", extravars={"captcha_worker_instances": {host: ["1", "2", "5"]}})
    assert up.status == "successful", up.stdout[-3000:]
    assert up.total("changed") == 1
    assert set(programs(lab, host)) == {"captcha-worker-1", "captcha-worker-2", "captcha-worker-5"}
    again = lab.run_playbook("scale.yml", extravars={"captcha_worker_instances": {host: ["1", "2", "5"]}})
    assert again.total("changed") == 0
    down = lab.run_playbook("scale.yml", extravars={"captcha_worker_instances": {host: ["1", "5"]}})
    assert down.status == "successful"
    assert set(programs(lab, host)) == {"captcha-worker-1", "captcha-worker-5"}
    for other in lab.hosts[1:]:
        assert set(programs(lab, other)) == {"captcha-worker-1"}, "hosts left out of the mapping are untouched"
    if worker_available() is None:
        wait_for(lambda: heartbeat_instances(lab, host) == {"1", "5"}, 30, "heartbeats of instances 1 and 5")
    reset = lab.run_playbook("scale.yml", extravars={"captcha_worker_instances": {host: ["1"]}})
    assert reset.status == "successful"


# --- check mode ---------------------------------------------------------------------------------------
def host_state(env: LabEnv) -> dict[str, tuple[list[str], str, set[str]]]:
    """Per host: the releases on disk, where the current link points, the supervisord programs."""
    state = {}
    for host in env.lab.hosts:
        base = Path(host.root) / "opt" / "captcha-fleet"
        releases = sorted(p.name for p in (base / "releases").iterdir())
        state[host.name] = (releases, str((base / "current").readlink()), set(programs(env, host.name)))
    return state


def test_site_in_check_mode_passes_on_a_new_release_and_changes_nothing(lab: LabEnv) -> None:
    need_provisioned()
    before = host_state(lab)
    source = snapshot_source(lab.lab.dir / "source-check", version="0.8.8")
    # one host each (the hosts are alike): check mode must neither fail nor change anything, switching or not
    for host, switch in zip(lab.hosts, (False, True), strict=False):
        result = lab.run_playbook(
            "site.yml",
            extravars={"worker_source_dir": str(source), "worker_site_switch_release": switch},
            check=True,
            limit=host,
        )
        assert result.status == "successful", result.stdout[-3000:]
        assert result.total("failures") == 0 and result.total("dark") == 0
        assert (result.stats.get("changed") or {}).get(host, 0) >= 1, "check mode says the new release would come"
        assert_no_secret(lab, result)
    assert host_state(lab) == before, "check mode changed a host"


def test_scale_in_check_mode_reports_what_it_would_change(lab: LabEnv) -> None:
    need_provisioned()
    host = lab.hosts[0]
    before = host_state(lab)
    result = lab.run_playbook("scale.yml", extravars={"captcha_worker_instances": {host: ["1", "2"]}}, check=True)
    assert result.status == "successful", result.stdout[-3000:]
    assert (result.stats.get("changed") or {}).get(host) == 1, result.stats
    would = [
        # raw's stdout (a tty's: stderr joined, CRLF line ends); the applier answers with one JSON line
        applier_answer(e["event_data"])
        for e in result.events
        if e.get("event") == "runner_on_ok"
        and e.get("event_data", {}).get("task") == "Apply the worker programs to supervisord"
    ]
    assert would == [
        {"changed": True, "check": True, "add": ["captcha-worker-2"], "remove": [], "service_manager": "supervisord"}
    ], would
    assert host_state(lab) == before, "check mode changed a host"
    same = lab.run_playbook("scale.yml", extravars={"captcha_worker_instances": {host: ["1"]}}, check=True)
    assert same.status == "successful" and same.total("changed") == 0, same.stdout[-3000:]


# --- the per-host lock ---------------------------------------------------------------------------------
def test_a_hand_run_scale_and_the_restart_handler_take_the_host_lock(lab: LabEnv) -> None:
    """A scale run of the controller (or a roll) holds the host: scale.yml and site.yml's restart wait for it."""
    from captcha_fleet.controller.hosts.lock import RedisHostLock

    need_provisioned()
    host = lab.hosts[0]
    keys = Keys(lab.key_prefix)
    client = lab.redis.client()
    held = RedisHostLock(client, keys, token="held-by-test")
    assert held.acquire([host], ttl_s=300) == {host}
    try:
        blocked = lab.run_playbook(
            "scale.yml", extravars={"captcha_worker_instances": {host: ["1", "2"]}, "worker_host_lock_wait_s": 2}
        )
        assert blocked.status == "failed"
        assert "host lock" in blocked.stdout and "actuator:held-by-test" in blocked.stdout, blocked.stdout[-3000:]
        assert set(programs(lab, host)) == {"captcha-worker-1"}, "scale.yml changed a locked host"
        # a config change notifies Restart workers: it must not restart a locked host
        restart = lab.run_playbook("site.yml", extravars={"worker_log_level": "DEBUG", "worker_host_lock_wait_s": 2},
                                   limit=host)  # fmt: skip
        assert restart.status == "failed", restart.stdout[-3000:]
        assert "actuator:held-by-test" in restart.stdout, restart.stdout[-3000:]
        # other programs notify Update worker programs: it must not add, remove or restart any on a locked host
        update = lab.run_playbook(
            "site.yml",
            extravars={"worker_instances_keep_running": False, "worker_instances": ["1", "3"],
                       "worker_host_lock_wait_s": 2},
            limit=host,
        )  # fmt: skip
        assert update.status == "failed", update.stdout[-3000:]
        assert "actuator:held-by-test" in update.stdout, update.stdout[-3000:]
        assert set(programs(lab, host)) == {"captcha-worker-1"}, "site.yml changed a locked host's programs"
        assert client.get(keys.host_lock(host)) == b"actuator:held-by-test"
    finally:
        held.release([host])
    # The blocked runs wrote the new configuration and programs but could not apply them: a re-run with the same
    # settings finds no file changed, and still restarts the workers and applies the programs it owes them.
    pid_before = program_pid(lab, host, "captcha-worker-1")
    owed = lab.run_playbook(
        "site.yml", extravars={"worker_instances_keep_running": False, "worker_instances": ["1", "3"]}, limit=host
    )
    assert owed.status == "successful", owed.stdout[-3000:]
    assert set(programs(lab, host)) == {"captcha-worker-1", "captcha-worker-3"}, "the owed program update ran"
    assert program_pid(lab, host, "captcha-worker-1") not in (None, pid_before), "the owed restart ran"
    base = lab.root(host) / "opt" / "captcha-fleet"
    assert not (base / "restart-owed").exists() and not (base / "programs-owed").exists()
    assert not client.exists(keys.host_lock(host)), "the restart gives the lock back"
    scaled = lab.run_playbook("scale.yml", extravars={"captcha_worker_instances": {host: ["1", "2"]}})
    assert scaled.status == "successful", scaled.stdout[-3000:]
    assert set(programs(lab, host)) == {"captcha-worker-1", "captcha-worker-2"}
    assert not client.exists(keys.host_lock(host)), "scale.yml gives the lock back"
    reset = lab.run_playbook("scale.yml", extravars={"captcha_worker_instances": {host: ["1"]}})
    assert reset.status == "successful", reset.stdout[-3000:]


def test_the_actuator_holding_the_host_lock_scales_without_waiting_for_itself(lab: LabEnv) -> None:
    """The actuator takes the hosts' lock itself and tells scale.yml so (no wait on its own hold)."""
    from captcha_fleet.controller.hosts.lock import RedisHostLock

    need_provisioned()
    host = lab.hosts[1]
    keys = Keys(lab.key_prefix)
    client = lab.redis.client()
    config = AnsibleActuatorConfig(inventory=lab.inventory, data_dir=lab.lab.dir / "runner-locked", timeout_s=60)
    one = {h: frozenset({"1"}) for h in lab.hosts}
    act = AnsibleActuator(config, running=one, host_lock=RedisHostLock(client, keys, token="lab"))
    try:
        started = time.monotonic()
        act.apply({**one, host: frozenset({"1", "2"})})
        assert act.wait_idle(60)
        assert time.monotonic() - started < 30, "the run waited for the actuator's own lock"
        assert [r.status for r in act.runs] == ["successful"], act.runs
        assert set(programs(lab, host)) == {"captcha-worker-1", "captcha-worker-2"}
        assert not client.exists(keys.host_lock(host))
        act.apply(one)
        assert act.wait_idle(60)
        assert set(programs(lab, host)) == {"captcha-worker-1"}
    finally:
        act.close()


# --- the actuator -------------------------------------------------------------------------------------
def test_actuator_applies_in_the_background_without_secrets(lab: LabEnv, actuator: AnsibleActuator) -> None:
    need_provisioned()
    host = lab.hosts[1]
    one = {h: frozenset({"1"}) for h in lab.hosts}
    started = time.monotonic()
    actuator.apply({**one, host: frozenset({"1", "2"})})
    assert time.monotonic() - started < 0.1, "apply must not block"
    assert actuator.wait_idle(60)
    state = actuator.observe().hosts[host]
    assert state.running == {"1", "2"} and state.reachable and state.last_error is None
    assert set(programs(lab, host)) == {"captcha-worker-1", "captcha-worker-2"}
    if worker_available() is None:
        wait_for(lambda: heartbeat_instances(lab, host) == {"1", "2"}, 30, "the new instance's heartbeat")
    actuator.apply(one)
    assert actuator.wait_idle(60)
    assert set(programs(lab, host)) == {"captcha-worker-1"}
    assert all(r.status == "successful" for r in actuator.runs)
    assert all(set(r.hosts) == {host} for r in actuator.runs), "only the host that changes is touched"


def test_actuator_marks_an_unreachable_host_and_places_its_share_elsewhere(
    lab: LabEnv,
    actuator: AnsibleActuator,
) -> None:
    need_provisioned()
    lost, *others = lab.hosts
    lab.lab.cut(lost)
    try:
        started = time.monotonic()
        actuator.apply({lost: frozenset({"1", "2"}), **{o: frozenset({"1"}) for o in others}})
        assert time.monotonic() - started < 0.1
        wait_for(lambda: not actuator.observe().hosts[lost].reachable, 60, f"{lost} marked unreachable")
        state = actuator.observe().hosts[lost]
        assert state.last_error and "unreachable" in state.last_error
        assert actuator.wait_idle(60)
        hosts = actuator.observe().hosts
        assert sum(len(hosts[o].running) for o in others) == 4, {o: hosts[o].running for o in others}
    finally:
        lab.lab.restore(lost)
    # back on the network: the probe brings it back (its share stays where it went)
    wait_for(lambda: actuator.observe().hosts[lost].reachable, 60, f"{lost} reachable again", interval_s=0.5)
    assert actuator.wait_idle(60)
    actuator.apply({h: frozenset({"1"}) for h in lab.hosts})
    assert actuator.wait_idle(60)
    for h in lab.hosts:
        assert set(programs(lab, h)) == {"captcha-worker-1"}


# --- rolling updates (a good roll under load: test_fleet_deployed_lab.py, with the controller running) ---------
def test_a_release_failing_its_health_gate_is_rolled_back_and_stops_the_roll(lab: LabEnv) -> None:
    need_provisioned()
    need_worker()
    before = {host: lab.current_release(host) for host in lab.hosts}
    running = {b.version for host in lab.hosts for b in lab.heartbeats(host) if b.state == "running"}
    assert len(running) == 1, running
    (good,) = running
    source = snapshot_source(lab.lab.dir / "source-bad", version="0.9.2", broken=True)
    result = lab.run_playbook(
        "rolling_update.yml",
        extravars={"worker_source_dir": str(source), "worker_health_timeout_s": 8, **CANARY},
    )
    assert result.status == "failed"
    assert_no_secret(lab, result)
    first, *rest = lab.hosts
    assert result.stats["failures"].get(first) == 1
    assert "rolled back" in result.stdout
    # the first host is back on the good release; the roll never reached the others
    wait_for(lambda: heartbeat_instances(lab, first, version=good) == {"1"}, 30, "the rolled-back heartbeat")
    assert lab.current_release(first) == before[first]
    for host in rest:
        assert heartbeat_instances(lab, host, version=good) == {"1"}
        assert lab.current_release(host) == before[host]
    assert not lab.redis.client().keys(f"{lab.key_prefix}:draining:*")


def test_a_host_that_runs_no_worker_is_judged_by_starting_the_release(lab: LabEnv) -> None:
    """Scaled to no service, a host passed the health gate on its empty state and kept a release whose worker
    raises at start (issue 23): the gate now starts the release's worker with no slots and waits for its heartbeat."""
    need_provisioned()
    need_worker()
    first, *_ = lab.hosts
    before = {host: lab.current_release(host) for host in lab.hosts}
    gated = {host: (lab.worker_base(host) / "gated-release").read_text() for host in lab.hosts}
    emptied = lab.run_playbook("scale.yml", extravars={"captcha_worker_instances": {first: []}}, limit=first)
    assert emptied.status == "successful", emptied.stdout[-3000:]
    wait_for(lambda: not heartbeat_instances(lab, first), 30, "no worker on the first host")
    try:
        source = snapshot_source(lab.lab.dir / "source-bad", version="0.9.2", broken=True)
        result = lab.run_playbook(
            "rolling_update.yml",
            extravars={"worker_source_dir": str(source), "worker_health_timeout_s": 8, **CANARY},
        )
        assert result.status == "failed"
        assert result.stats["failures"].get(first) == 1
        assert "probe worker" in result.stdout and "a broken release" in result.stdout, result.stdout[-3000:]
        assert_no_secret(lab, result)
        for host in lab.hosts:  # rolled back on the first host, never reached the others; no host gated it
            assert lab.current_release(host) == before[host]
            assert (lab.worker_base(host) / "gated-release").read_text() == gated[host]
        assert not lab.redis.client().keys(f"{lab.key_prefix}:draining:*")
    finally:
        back = lab.run_playbook("scale.yml", extravars={"captcha_worker_instances": {first: ["1"]}}, limit=first)
        assert back.status == "successful", back.stdout[-3000:]
        wait_for(lambda: heartbeat_instances(lab, first) == {"1"}, 60, "the first host's worker back")


# --- a host lost mid-load -----------------------------------------------------------------------------
def test_a_host_cut_off_mid_load_loses_no_task(lab: LabEnv, actuator: AnsibleActuator) -> None:
    need_provisioned()
    need_worker()
    lost, *others = lab.hosts
    with Load(lab.redis.client(), lab.key_prefix, rate_per_s=30, tick_s=0.1) as load:
        wait_for(lambda: any(b.busy for b in lab.heartbeats(lost)), 30, f"{lost} holding tasks")
        killed = lab.lab.kill(lost)  # sshd, supervisord and its workers, mid-solve
        try:
            assert killed > 0
            actuator.apply({lost: frozenset({"1", "2"}), **{o: frozenset({"1"}) for o in others}})
            wait_for(lambda: not actuator.observe().hosts[lost].reachable, 60, f"{lost} marked")
            assert actuator.wait_idle(60)
            time.sleep(3)
            results = load.finish(timeout_s=120)
            assert [r for r in results if r.get("status") != "success"] == []
            hosts = actuator.observe().hosts
            # the lost host's share (two services) went to the two others: 1 + 1 + 2
            assert sum(len(hosts[o].running) for o in others) == 4
            assert hosts[lost].running == frozenset() and not hosts[lost].reachable
            assert not lab.heartbeats(lost)
        finally:
            lab.lab.revive(lost)  # as after a reboot: the tests after this one (decommission) reach it again


# --- decommission (last: it takes the hosts out) ----------------------------------------------------------
def test_decommission_removes_the_services_the_supervisord_and_at_last_the_user(lab: LabEnv) -> None:
    import pwd

    need_provisioned()
    first, *rest = lab.lab.hosts
    one = lab.run_playbook("decommission.yml", limit=first.name)
    assert one.status == "successful", one.stdout[-3000:]
    root = Path(first.root)
    for gone in ("opt/captcha-fleet", "etc/captcha-fleet", "etc/captcha-supervisor", "var/log/captcha-supervisor"):
        assert not (root / gone).exists(), gone
    assert not (root / "run" / "captcha-supervisor.sock").exists(), "the private supervisord still runs"
    conf = str(root / "etc" / "captcha-supervisor" / "supervisord.conf")
    assert subprocess.run(["pgrep", "-f", conf], check=False).returncode == 1, "the private supervisord still runs"
    pwd.getpwnam(lab.lab.service_user)  # the other hosts' workers still run as it: kept
    for other in rest:
        assert "captcha-worker-1" in programs(lab, other.name), "another host was touched"
    others = lab.run_playbook("decommission.yml", limit=",".join(h.name for h in rest))
    assert others.status == "successful", others.stdout[-3000:]
    with pytest.raises(KeyError):
        pwd.getpwnam(lab.lab.service_user)
    again = lab.run_playbook("decommission.yml")
    assert again.status == "successful", again.stdout[-3000:]
    assert again.total("changed") == 0, again.stats
