"""The fleet as deployed: ``site.yml`` from a production-shaped inventory, the controller as its role runs it.

Four lab hosts: ``ctest1`` runs Redis, ``ctest2..4`` are worker hosts, and ``ctest2`` and ``ctest3`` also run a
controller each (the controller role's supervisord program, its own release, its own copy of the playbooks and a
worker inventory derived from this one): one leads, the other stands by. The
inventory is ``inventory/production.example`` with the lab's hosts: its ``group_vars`` files as they are, a vault
encrypted with a test password, and host variables for the lab (paths, fast timings, the sandbox). Nothing in
the test process scales anything: it only submits tasks and watches heartbeats.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import Heartbeat
from lab.env import REPO_ROOT, LabEnv, PlaybookResult, read_heartbeats, snapshot_source
from lab.production import lab_vars, write_example_inventory, write_secret, write_vault
from tests.lab import helpers
from tests.lab.helpers import CONTROLLER_SETTINGS, DrainWatch, Load, controller_available, worker_available

wait_for = partial(helpers.wait_for, interval_s=0.5)  # this module's pace

pytestmark = [pytest.mark.lab, pytest.mark.slow]
LAB_HOSTS = 4
LAB_SANDBOX = True


@dataclass
class Deployed:
    """The deployed fleet: where its Redis is, its secrets, the controller host's root."""

    env: LabEnv
    inventory: Path
    vault_password_file: Path
    redis_password: str
    api_key: str
    controller_hosts: list[str]
    worker_hosts: list[str]

    @property
    def controller_host(self) -> str:
        return self.controller_hosts[0]

    @property
    def redis_url(self) -> str:
        address = self.env.lab.hosts[0].address
        return f"redis://:{self.redis_password}@{address}:6379/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=10)

    def root(self, host: str) -> Path:
        return self.env.root(host)

    def heartbeats(self) -> list[Heartbeat]:
        client = self.client()
        try:
            return read_heartbeats(client, self.env.key_prefix)
        finally:
            client.close()

    def hosts_running(self) -> set[str]:
        return {b.host for b in self.heartbeats() if b.state == "running"}


def production_inventory(env: LabEnv, redis_password: str, api_key: str, vault_password: str) -> tuple[Path, Path]:
    """inventory/production.example with the lab's hosts (one Redis, no Sentinel, ACL or TLS: the
    production-shaped lab of lab/production.py has those); returns (inventory dir, vault password file)."""
    redis_host, *workers = env.lab.hosts
    sandbox = env.sandbox.url if env.sandbox else ""
    common = {
        **lab_vars(env),
        # the example's addresses, replaced by the lab's
        "redis_bind": [redis_host.address],
        "worker_redis_url": f"redis://:{{{{ vault_redis_password }}}}@{redis_host.address}:6379/0",
        "worker_api_base": sandbox,
        "worker_instances": [],  # the controller decides how many run where
        "controller_api_base": sandbox,
        "controller_key_prefix": env.key_prefix,
        "controller_settings": CONTROLLER_SETTINGS,
        "controller_actuator_settings": {"max_services_per_host": 1, "timeout_s": 60, "retry_unreachable_s": 5.0},
    }
    groups = {
        "redis": [redis_host.name],
        "workers": [h.name for h in workers],
        "controller": [workers[0].name, workers[1].name],
    }
    inventory, password_file = env.lab.dir / "production", env.lab.dir / "vault-password"
    write_secret(password_file, vault_password + "\n")
    write_example_inventory(env, inventory, groups, common, password_file, vault(env, redis_password, api_key))
    return inventory, password_file


def vault(env: LabEnv, redis_password: str, api_key: str) -> dict[str, str]:
    """The vault's secrets: the Redis password, the API key and the actuator's SSH key."""
    return {
        "vault_redis_password": redis_password,
        "vault_captchaai_key": api_key,
        "vault_actuator_ssh_key": env.lab.key_path.read_text(encoding="utf-8"),
    }


@pytest.fixture(scope="module")
def deployed(lab: LabEnv) -> Iterator[Deployed]:
    """site.yml run once from the production-shaped inventory."""
    for reason in (worker_available(), controller_available()):
        if reason:
            pytest.skip(reason)
    redis_password, api_key = secrets.token_hex(16), secrets.token_hex(16)
    inventory, password_file = production_inventory(lab, redis_password, api_key, secrets.token_hex(8))
    fleet = Deployed(lab, inventory, password_file, redis_password, api_key, lab.hosts[1:3], lab.hosts[1:])
    result = lab.run_playbook(
        "site.yml",
        inventory=inventory,
        envvars={"ANSIBLE_VAULT_PASSWORD_FILE": str(password_file)},
        timeout_s=900,
    )
    assert result.status == "successful", result.stdout[-4000:]
    assert redis_password not in result.stdout and api_key not in result.stdout
    yield fleet


def controller_program(fleet: Deployed, host: str) -> str:
    return fleet.env.programs(host).get("captcha-controller", ("?", 0))[0]


def test_worker_releases_carry_no_ansible_and_controller_releases_do(deployed: Deployed) -> None:
    """The controller extra: Ansible, ansible-runner and paramiko only where the controller runs."""

    def site_packages(host: str, base: str) -> Path:
        venv = fleet.root(host) / "opt" / base / "current" / "venv"
        return next(venv.glob("lib/python3*/site-packages"))

    fleet = deployed
    for host in fleet.worker_hosts:
        packages = site_packages(host, "captcha-fleet")
        assert (packages / "captcha_fleet").is_dir() and (packages / "redis").is_dir()
        assert [n for n in ("ansible", "ansible_runner", "paramiko") if (packages / n).exists()] == [], host
    for host in fleet.controller_hosts:
        packages = site_packages(host, "captcha-controller")
        assert all((packages / n).is_dir() for n in ("ansible", "ansible_runner", "paramiko")), host


def test_the_deployed_controller_scales_from_one_host_to_three_and_back(deployed: Deployed) -> None:
    fleet = deployed
    assert [controller_program(fleet, h) for h in fleet.controller_hosts] == ["RUNNING", "RUNNING"]
    client = fleet.client()
    keys = Keys(fleet.env.key_prefix)
    wait_for(lambda: client.get(keys.controller_leader), 60, "the controller leading")
    wait_for(lambda: len(fleet.hosts_running()) == 1, 120, "the minimum: one service on one host")
    from captcha_fleet.contract.tasks import NewTask
    from captcha_fleet.worker.producer import Producer

    ids = Producer(client, keys).submit_many(NewTask("base64", {"body": "aGVsbG8="}) for _ in range(4000))
    wait_for(lambda: fleet.hosts_running() == set(fleet.worker_hosts), 120, "services on all three hosts")

    def all_done() -> bool:
        return all(r is not None for r in client.hmget(keys.results, ids))

    wait_for(all_done, 240, "every task solved", interval_s=1.0)
    wait_for(lambda: len(fleet.hosts_running()) == 1, 120, "back to one host after the window")
    results = [json.loads(r or "{}") for r in client.hmget(keys.results, ids)]
    assert [r for r in results if r.get("status") != "success"] == []
    hosts = {name: json.loads(v) for name, v in client.hgetall(keys.hosts).items()}
    assert {h.decode() if isinstance(h, bytes) else h for h in hosts} == set(fleet.worker_hosts)
    assert all(h["reachable"] and h["last_error"] is None for h in hosts.values()), hosts
    client.close()


@pytest.mark.parametrize("which", [0, 1])
def test_no_file_the_controller_host_writes_holds_a_secret(deployed: Deployed, which: int) -> None:
    fleet = deployed
    root = fleet.root(fleet.controller_hosts[which])
    env_file = root / "etc" / "captcha-controller" / "controller.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    checked = 0
    found = []
    for where in ("var/lib/captcha-controller", "var/log/captcha-controller", "opt/captcha-controller", "tmp"):
        for path in (root / where).rglob("*"):
            if not path.is_file() or path.is_symlink():
                continue
            data = path.read_bytes()
            checked += 1
            if fleet.redis_password.encode() in data or fleet.api_key.encode() in data:
                found.append(str(path.relative_to(root)))
    assert checked > 0
    assert (root / "var" / "log" / "captcha-controller" / "controller.log").stat().st_size > 0
    assert found == []


def test_a_changed_host_key_fails_the_host_with_a_clear_message(deployed: Deployed, tmp_path: Path) -> None:
    """The controller's own worker inventory, with a known_hosts that holds a wrong key for one host."""
    from captcha_fleet.controller.actuators.ansible import AnsibleActuator, AnsibleActuatorConfig
    from captcha_fleet.controller.hosts.lock import RedisHostLock

    fleet = deployed
    lab_ = fleet.env.lab
    derived_path = fleet.root(fleet.controller_host) / "etc" / "captcha-controller" / "inventory.yml"
    text = derived_path.read_text(encoding="utf-8")
    assert fleet.redis_password not in text and fleet.api_key not in text
    derived = yaml.safe_load(text)
    hosts = derived["all"]["children"]["workers"]["hosts"]
    assert set(hosts) == set(fleet.worker_hosts)
    target = fleet.worker_hosts[0]
    other_key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    wrong = tmp_path / "known_hosts"
    address = hosts[target]["ansible_host"]
    lines = [ln for ln in lab_.known_hosts.read_text().splitlines() if not ln.startswith(f"{address} ")]
    kind, key = other_key.with_suffix(".pub").read_text().split()[:2]
    wrong.write_text("\n".join([*lines, f"{address} {kind} {key}"]) + "\n")
    for host_vars in hosts.values():
        args = host_vars["ansible_ssh_common_args"].replace(str(lab_.known_hosts), str(wrong))
        # leave host key checking to the actuator (the lab's inventory asks for it itself)
        host_vars["ansible_ssh_common_args"] = args.replace("-o StrictHostKeyChecking=yes", "")
        host_vars["ansible_control_path_dir"] = str(tmp_path / "cp")  # no reused connection
    inventory = tmp_path / "workers.yml"
    inventory.write_text(yaml.safe_dump(derived), encoding="utf-8")
    running = {h: frozenset(b.instance for b in fleet.heartbeats() if b.host == h) for h in hosts}
    config = AnsibleActuatorConfig(
        inventory=inventory,
        data_dir=tmp_path / "runner",
        ssh_private_key_file=str(lab_.key_path),
        max_services_per_host=1,
        timeout_s=60,
        retry_unreachable_s=3600,
        replace_failed=False,  # as the deployed controller's (it re-places services itself): no run on other hosts
    )
    # the actuator believes one more service runs there: a run is due, which scale.yml would make a no-op; it holds
    # the host lock as the deployed controller's does (scale.yml then starts with its own tasks, which show errors)
    lock_client = fleet.client()
    host_lock = RedisHostLock(lock_client, Keys(fleet.env.key_prefix), token="host-key-test")
    actuator = AnsibleActuator(config, running={**running, target: running[target] | {"99"}}, host_lock=host_lock)
    try:
        actuator.apply(running)
        assert actuator.wait_idle(90)
    finally:
        actuator.close()
        lock_client.close()
    state = actuator.observe().hosts[target]
    assert not state.reachable
    # ssh says "Host key verification failed", mitogen "... an unrecognized or mismatching host key"
    assert state.last_error and "host key" in state.last_error.lower(), state.last_error
    assert [r.status for r in actuator.runs] == ["failed"]


# --- rolling updates with the controller running -------------------------------------------------------------
def roll(
    fleet: Deployed,
    source: Path,
    cancel: Callable[[], bool] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    **extravars: Any,
) -> PlaybookResult:
    return fleet.env.run_playbook(
        "rolling_update.yml",
        inventory=fleet.inventory,
        # a cancelled run can take a ControlPersist master down with it; the next run's first use of the dying
        # socket then fails once ("Data could not be sent to remote host"): retry the connection as ssh allows
        envvars={"ANSIBLE_VAULT_PASSWORD_FILE": str(fleet.vault_password_file), "ANSIBLE_SSH_RETRIES": "2"},
        extravars={"worker_source_dir": str(source), **extravars},
        cancel=cancel,
        on_event=on_event,
    )


def release_of(fleet: Deployed, host: str) -> tuple[str, str]:
    """(current link target, last gated release) of a worker host, as release directory names."""
    base = fleet.env.worker_base(host)
    gated = (base / "gated-release").read_text(encoding="utf-8").strip()
    return fleet.env.current_release(host), Path(gated).name


def assert_settled_on(fleet: Deployed, version: str) -> None:
    client = fleet.client()
    try:
        assert client.keys(f"{fleet.env.key_prefix}:draining:*") == []
        assert list(client.hscan_iter(Keys(fleet.env.key_prefix).results, match="canary-*")) == []
        holders = [str(client.get(k)) for k in client.keys(f"{fleet.env.key_prefix}:hostlock:*")]
        assert not [h for h in holders if "rolling_update:" in h], "the roll gave its locks back"
    finally:
        client.close()
    for host in fleet.worker_hosts:
        current, gated = release_of(fleet, host)
        assert version in current and gated == current, (host, current, gated)
    versions = {b.version for b in fleet.heartbeats() if b.state == "running"}
    assert versions == {version}, versions


def test_a_roll_cut_off_under_load_is_finished_by_a_re_run_that_gates_every_host_without_a_paid_solve(
    deployed: Deployed,
) -> None:
    """A roll stopped after the first host's switch (an operator's Ctrl-C, a lost control machine), then run
    again, while tasks keep coming and the controller keeps scaling: the re-run finishes what the first left and
    prunes; hosts the controller runs nothing on pass by their service state; one host drains at a time, in
    inventory order; no task submitted meanwhile fails and no canary is paid for."""
    fleet = deployed
    source = snapshot_source(fleet.env.lab.dir / "source-next", version="0.9.1")
    # one host's release predates a module the new helper imports (as after an upgrade): the roll runs the helper
    # with the new release's Python there instead of failing with "no answer"
    older = fleet.worker_hosts[0]
    packages = fleet.env.worker_base(older) / "releases" / release_of(fleet, older)[1] / "venv"
    next(packages.glob("lib/python3*/site-packages/captcha_fleet/contract/fleet_snapshot.py")).unlink()
    switched: list[str] = []  # the marker: the roll stops once the first host's link is switched, before its gate

    def note_switch(event: dict[str, Any]) -> None:
        data = event.get("event_data") or {}
        if event.get("event") == "runner_on_ok" and data.get("task") == "Switch the current link to the new release":
            switched.append(str(data.get("host")))

    gated_before = {h: release_of(fleet, h)[1] for h in fleet.worker_hosts}
    watch = DrainWatch(fleet.client(), fleet.env.key_prefix)
    with Load(fleet.client(), fleet.env.key_prefix, rate_per_s=5, tick_s=0.5) as load, watch:
        time.sleep(2)
        empty = [h for h in fleet.worker_hosts if h not in fleet.hosts_running()]
        cut = roll(fleet, source, cancel=lambda: bool(switched), on_event=note_switch)
        assert cut.status == "canceled", cut.stdout[-3000:]
        first = switched[0]
        current, gated = release_of(fleet, first)
        assert "0.9.1" in current and gated == gated_before[first], "cut off after the switch, before the gate"
        client = fleet.client()
        try:
            for key in client.keys(f"{fleet.env.key_prefix}:draining:*"):
                assert client.ttl(key) > 0, "a drain flag left by a cut-off roll must expire by itself"
            # the roll leases the host step by step: cut off at its restart, lock and flag outlive it by at most
            # the longest step's lease (the restart's or the probe's), not one TTL for the whole host (issue 23, 8)
            stop_s = int(yaml.safe_load((fleet.inventory / "group_vars" / "workers" / "main.yml").read_text())
                         ["worker_stop_timeout_s"])  # fmt: skip
            health_s = int(fleet.env.base_vars()["worker_health_timeout_s"])
            margin_s = int(yaml.safe_load((REPO_ROOT / "roles" / "worker" / "defaults" / "main.yml").read_text())
                           ["worker_roll_lease_margin_s"])  # fmt: skip
            lease_s = max(stop_s * max(1, len(programs(fleet, first))), health_s + 30) + margin_s
            prefix = fleet.env.key_prefix
            assert client.get(f"{prefix}:hostlock:{first}") in (f"rolling_update:{first}".encode(), None)
            for key in (f"{prefix}:hostlock:{first}", f"{prefix}:draining:{first}"):
                assert client.pttl(key) <= 1000 * lease_s, (key, client.pttl(key), lease_s)
        finally:
            client.close()
        # a restart an earlier site.yml run could not do (the host was locked) is owed on every host
        owed = [fleet.env.worker_base(h) / "restart-owed" for h in fleet.worker_hosts]
        for mark in owed:
            mark.write_text("owed by a site.yml run that found the host locked\n", encoding="utf-8")
        again = roll(fleet, source, worker_releases_keep=0)
    assert again.status == "successful", again.stdout[-4000:]
    # the roll restarted every host on what is on disk: the next site.yml owes none of them a restart
    assert [m for m in owed if m.exists()] == []
    for result in (cut, again):
        assert fleet.redis_password not in result.stdout and fleet.api_key not in result.stdout
    assert empty, "some worker host should run nothing (the controller holds the minimum)"
    assert again.total("failures") == 0
    results = load.finish()
    assert len(results) >= 20
    assert [r for r in results if r.get("status") != "success"] == []
    assert watch.max_at_once == 1, "one host at a time"
    assert watch.order == fleet.worker_hosts, watch.order
    assert_settled_on(fleet, "0.9.1")
    for host in fleet.worker_hosts:  # the roll prunes: only the gated release is left (keep 0)
        releases = fleet.env.worker_base(host) / "releases"
        assert [p.name for p in releases.iterdir()] == [release_of(fleet, host)[0]]


# --- site.yml on a running fleet ------------------------------------------------------------------------------
def programs(fleet: Deployed, host: str) -> set[str]:
    return {name for name in fleet.env.programs(host) if name.startswith("captcha-worker-")}


class PulsedLoad(Load):
    """A load that swings between ``high`` and ``low`` tasks/s every ``phase_s``: the controller keeps scaling
    up and down under it (one to three services), so a run beside it meets instances replaced at any time."""

    def __init__(self, client: redis.Redis, key_prefix: str, high: float, low: float, phase_s: float) -> None:
        super().__init__(client, key_prefix, rate_per_s=high, tick_s=0.5)
        self.batches = (max(1, round(high * 0.5)), max(1, round(low * 0.5)))
        self.phase_s = phase_s
        self.submitted_since = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            phase = int((time.monotonic() - self.submitted_since) / self.phase_s) % 2
            tasks = [self.new_task("base64", {"body": "aGVsbG8="}) for _ in range(self.batches[phase])]
            self.ids += self.producer.submit_many(tasks)


class ProgramWatch(helpers.Background):
    """Samples each worker host's programs and the controller's managed instances during a run: which programs
    ever ran, which the controller ever wanted, how often a host's programs changed, any program that came back
    after it was removed (instance names are never reused, so only a stale instance set written back brings one
    back) and any removed while the controller still managed it (the controller drops it from its state first)."""

    def __init__(self, fleet: Deployed) -> None:
        super().__init__()
        self.fleet = fleet
        self.client = fleet.client()
        self.keys = Keys(fleet.env.key_prefix)
        self.seen: dict[str, set[str]] = {h: set() for h in fleet.worker_hosts}
        self.wanted: dict[str, set[str]] = {h: set() for h in fleet.worker_hosts}
        self.current: dict[str, set[str]] = {h: set() for h in fleet.worker_hosts}
        self.came_back: list[tuple[str, str]] = []
        self.removed_while_managed: list[tuple[str, str]] = []
        self.changes = 0
        self.sampled: set[str] = set()

    def managed(self) -> dict[str, list[str]]:
        raw = self.client.hget(self.keys.controller_state, "managed")
        return {str(h): [str(i) for i in v] for h, v in json.loads(raw or "{}").items()}

    def _sample(self) -> None:
        managed = {h: {f"captcha-worker-{i}" for i in v} for h, v in self.managed().items()}
        for host, names in managed.items():
            self.wanted.setdefault(host, set()).update(names)
        for host in self.fleet.worker_hosts:
            try:
                now = programs(self.fleet, host)
            except (OSError, xmlrpc.client.Error):
                continue  # the host's supervisord is busy: the next sample sees it
            if host not in self.sampled:
                self.sampled.add(host)
                self.wanted[host] |= now  # what ran before the watch began was wanted then
                self.current[host] = now
            self.changes += len(now ^ self.current[host])
            removed = (self.current[host] - now) & managed.get(host, set())
            self.removed_while_managed += [(host, name) for name in sorted(removed)]
            gone = self.seen[host] - self.current[host]
            self.came_back += [(host, name) for name in sorted(now & gone)]
            self.seen[host] |= now
            self.current[host] = now

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            self._sample()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.client.close()


def worker_environ(fleet: Deployed, host: str, program: str) -> dict[str, str] | None:
    """The environment a running program's process started with (run-worker.sh execs the worker); one the
    controller has just started is given its few seconds to run; None for one it removed meanwhile."""
    state, pid = wait_for(
        lambda: (s := fleet.env.programs(host).get(program, ("gone", 0)))[0] in ("RUNNING", "gone") and s,
        30,
        f"{program} on {host} running",
        lambda: fleet.env.programs(host),
    )
    if state == "gone":
        return None
    assert pid, (host, program, state)
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except FileNotFoundError:
        return None  # stopped since (the controller scaling in)
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if b"=" in item)


def test_key_rotation_with_site_yml_while_the_controller_scales_under_load(deployed: Deployed) -> None:
    """site.yml rotates the API key while tasks keep coming (swinging between 45 and 10 a second) and the
    controller keeps adding and removing services: it ends with rc 0 and no task failed or rescued, restarts
    drained, one host at a time, never writes back an instance set it read earlier (no program the controller
    removed comes back, none it never wanted appears), and every worker and both controllers end on the new key."""
    fleet = deployed
    assert [controller_program(fleet, h) for h in fleet.controller_hosts] == ["RUNNING", "RUNNING"]
    new_key = secrets.token_hex(16)
    write_vault(fleet.inventory, fleet.vault_password_file, vault(fleet.env, fleet.redis_password, new_key))
    with (
        PulsedLoad(fleet.client(), fleet.env.key_prefix, high=45, low=10, phase_s=10) as load,
        DrainWatch(fleet.client(), fleet.env.key_prefix) as watch,
        ProgramWatch(fleet) as layout,
    ):
        wait_for(lambda: len(fleet.hosts_running()) >= 2, 90, "the controller scaling out under the load")
        runs_before = sum(scale_runs_started(fleet, h) for h in fleet.controller_hosts)
        changes_before = layout.changes
        result = fleet.env.run_playbook(
            "site.yml",
            inventory=fleet.inventory,
            envvars={"ANSIBLE_VAULT_PASSWORD_FILE": str(fleet.vault_password_file)},
            limit="workers",
        )
        scale_runs = sum(scale_runs_started(fleet, h) for h in fleet.controller_hosts) - runs_before
        changes = layout.changes - changes_before
        results = load.finish(timeout_s=180)
    assert result.status == "successful", (result.failed_tasks(), result.stdout[-2000:])
    assert result.total("failures") == 0 and result.total("rescued") == 0, (result.stats, result.failed_tasks())
    assert new_key not in result.stdout and fleet.redis_password not in result.stdout
    fleet.api_key = new_key
    # else this test proves nothing: the controller changed the hosts' instances while site.yml ran
    assert scale_runs > 0 and changes > 0, (scale_runs, changes)
    assert len(results) >= 100
    assert [r for r in results if r.get("status") != "success"] == []
    assert watch.max_at_once == 1 and watch.hosts == set(fleet.worker_hosts), (watch.max_at_once, watch.order)
    assert layout.came_back == [], "a program the controller removed came back (a stale instance set)"
    assert layout.removed_while_managed == [], "a program the controller runs was removed (a stale instance set)"
    for host in fleet.worker_hosts:
        unwanted = layout.seen[host] - layout.wanted.get(host, set())
        assert not unwanted, (host, unwanted, "ran though the controller never wanted it")

    def settled() -> bool:
        managed = layout.managed()
        return all(
            programs(fleet, h) == {f"captcha-worker-{i}" for i in managed.get(h, [])} for h in fleet.worker_hosts
        )

    wait_for(settled, 60, "each host running what the controller manages there", layout.managed)
    checked = 0
    for host in fleet.worker_hosts:
        for program in programs(fleet, host):
            env = worker_environ(fleet, host, program)
            assert env is None or env.get("CAPTCHAAI_KEY") == new_key, (host, program)
            checked += env is not None
    assert checked >= 1, "the controller keeps at least one worker"
    for host in fleet.controller_hosts:
        env = worker_environ(fleet, host, "captcha-controller")
        assert env is not None and env.get("CAPTCHAAI_KEY") == new_key, f"the controller on {host} kept the old key"


# --- two controllers ------------------------------------------------------------------------------------------
def leader_host(fleet: Deployed) -> str | None:
    """The controller host whose process holds the leader lock (its token is ``hostname:pid:random``)."""
    client = fleet.client()
    try:
        token = client.get(Keys(fleet.env.key_prefix).controller_leader)
    finally:
        client.close()
    if token is None:
        return None
    pid = (token.decode() if isinstance(token, bytes) else str(token)).split(":")[1]
    for host in fleet.controller_hosts:
        if str(fleet.env.programs(host).get("captcha-controller", ("", 0))[1]) == pid:
            return host
    return None


def scale_runs_started(fleet: Deployed, host: str) -> int:
    log_file = fleet.root(host) / "var" / "log" / "captcha-controller" / "controller.log"
    return len(re.findall(r"scale run \w+: \{", log_file.read_text(encoding="utf-8", errors="replace")))


def test_the_standby_takes_over_and_the_ex_leader_stops_acting(deployed: Deployed) -> None:
    fleet = deployed
    first = wait_for(lambda: leader_host(fleet), 60, "a leader")
    standby = next(h for h in fleet.controller_hosts if h != first)
    log_file = fleet.root(first) / "var" / "log" / "captcha-controller" / "controller.log"
    log_before_cut = log_file.stat().st_size
    fleet.env.lab.cut(first)  # the leader's host drops off the network (its worker too)
    try:
        wait_for(lambda: leader_host(fleet) == standby, 60, "the standby leading")
        client = fleet.client()
        keys = Keys(fleet.env.key_prefix)
        from captcha_fleet.contract.tasks import NewTask
        from captcha_fleet.worker.producer import Producer

        ids = Producer(client, keys).submit_many(NewTask("base64", {"body": "aGVsbG8="}) for _ in range(1500))
        wait_for(lambda: len(fleet.hosts_running() - {first}) >= 2, 120, "the new leader scaling up")
        wait_for(lambda: all(r is not None for r in client.hmget(keys.results, ids)), 240, "every task solved")
        assert [r for r in client.hmget(keys.results, ids) if json.loads(r or "{}").get("status") != "success"] == []
        client.close()
    finally:
        fleet.env.lab.restore(first)
    started = scale_runs_started(fleet, first)

    def since_cut() -> str:
        return log_file.read_bytes()[log_before_cut:].decode(errors="replace")

    wait_for(lambda: "lost the leader lock" in since_cut(), 60, "the ex-leader standing by")
    time.sleep(15)  # three retry_unreachable_s periods: a stale actuator would probe its hosts again by now
    assert scale_runs_started(fleet, first) == started, f"the ex-leader's actuator went on acting:\n{since_cut()}"
    assert leader_host(fleet) == standby
