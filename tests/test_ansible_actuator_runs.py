"""The ansible actuator's runs on this machine (real ansible-runner and ansible-playbook, a host that refuses SSH):
what reaches disk under ``data_dir``, what a killed controller left there, and an ex-leader that must stop acting.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import redis
import yaml

from captcha_fleet.contract.keys import Keys
from captcha_fleet.controller.actuators.ansible import (
    APPLY_TASK,
    FINISHED_TASK,
    REPO_ROOT,
    AnsibleActuator,
    AnsibleActuatorConfig,
    host_failures,
    runner_env,
)
from captcha_fleet.controller.actuators.base import ActuatorState
from captcha_fleet.controller.leader import LeaderLock
from captcha_fleet.controller.loop import Controller
from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.sources.redis_signals import RedisSignalSource
from captcha_fleet.controller.strategies.registry import make_policy


def closed_port() -> int:
    """A loopback port nothing listens on (SSH to it is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refusing_inventory(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.yml"
    path.write_text(
        "all:\n  children:\n    workers:\n      hosts:\n"
        f"        w1: {{ansible_host: 127.0.0.1, ansible_port: {closed_port()}}}\n",
        encoding="utf-8",
    )
    return path


def test_no_secret_of_the_controller_environment_reaches_the_runner_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_password, api_key = secrets.token_hex(16), secrets.token_hex(16)
    monkeypatch.setenv("REDIS_URL", f"redis://:{redis_password}@10.0.0.1:6379/0")
    monkeypatch.setenv("CAPTCHAAI_KEY", api_key)
    data_dir = tmp_path / "runner"
    leaked: list[str] = []
    seen_files: list[str] = []

    def inspect(private: Path) -> None:
        for path in private.rglob("*"):
            if path.is_file():
                seen_files.append(path.name)
                text = path.read_text(errors="replace")
                if redis_password in text or api_key in text:
                    leaked.append(str(path.relative_to(private)))

    config = AnsibleActuatorConfig(inventory=refusing_inventory(tmp_path), data_dir=data_dir, timeout_s=60)
    actuator = AnsibleActuator(config, inspect_artifacts=inspect)
    try:
        actuator.apply({"w1": frozenset({"1"})})
        assert actuator.wait_idle(60)
    finally:
        actuator.close()
    assert "command" in seen_files, "the run wrote no artifacts: nothing was checked"
    assert leaked == []
    state = actuator.observe().hosts["w1"]
    assert not state.reachable and state.last_error and state.last_error.startswith("unreachable")
    assert list(data_dir.iterdir()) == []


def test_runner_env_keeps_what_ansible_needs_and_drops_the_rest() -> None:
    prepared = {
        "PATH": "/venv/bin:/usr/bin",
        "HOME": "/var/lib/c",
        "REDIS_URL": "redis://:pw@h/0",
        "CAPTCHAAI_KEY": "k",
        "ANSIBLE_STDOUT_CALLBACK": "awx_display",
        "AWX_ISOLATED_DATA_DIR": "/d",
    }
    env = runner_env(prepared, {"PATH": "/venv/bin:/usr/bin"})
    assert env == {
        "PATH": "/venv/bin:/usr/bin",
        "HOME": "/var/lib/c",
        "ANSIBLE_STDOUT_CALLBACK": "awx_display",
        "AWX_ISOLATED_DATA_DIR": "/d",
    }


def test_run_dirs_a_killed_controller_left_are_swept_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "runner"
    stale = data_dir / "scale-abc123" / "artifacts" / "x"
    stale.mkdir(parents=True)
    (stale / "command").write_text('{"env": {"CAPTCHAAI_KEY": "k"}}', encoding="utf-8")
    unrelated = data_dir / "notes"
    unrelated.mkdir()
    actuator = AnsibleActuator(AnsibleActuatorConfig(inventory=refusing_inventory(tmp_path), data_dir=data_dir))
    actuator.close()
    assert sorted(p.name for p in data_dir.iterdir()) == ["notes"]


def test_an_actuator_that_stood_down_stops_acting(tmp_path: Path) -> None:
    """An ex-leader's actuator must not go on probing (and so changing) hosts with its stale desired state."""
    config = AnsibleActuatorConfig(
        inventory=refusing_inventory(tmp_path), data_dir=tmp_path / "runner", timeout_s=60, retry_unreachable_s=0.0
    )
    actuator = AnsibleActuator(config)
    try:
        actuator.apply({"w1": frozenset({"1"})})
        deadline = time.monotonic() + 60
        while not actuator.runs:  # unreachable, so it is probed again and again
            assert time.monotonic() < deadline, actuator.runs
            time.sleep(0.05)
        actuator.stand_down()
        assert actuator.wait_idle(60)
        runs = len(actuator.runs)
        time.sleep(1.5)
        assert len(actuator.runs) == runs
        assert not actuator.observe().busy
    finally:
        actuator.close()


def test_an_actuator_whose_leader_lease_ran_out_starts_no_run(tmp_path: Path) -> None:
    """A leader cut off from Redis cannot learn that it lost the lock: its actuator stops when the lease runs out."""
    config = AnsibleActuatorConfig(
        inventory=refusing_inventory(tmp_path), data_dir=tmp_path / "runner", timeout_s=60, retry_unreachable_s=0.0
    )
    actuator = AnsibleActuator(config)
    try:
        lease_s = 3.0
        actuator.hold_lease(time.monotonic() + lease_s)
        lease_ends = time.time() + lease_s
        actuator.apply({"w1": frozenset({"1"})})
        deadline = time.monotonic() + 60
        while not actuator.runs:  # unreachable, so it is probed again and again while the lease holds
            assert time.monotonic() < deadline, actuator.runs
            time.sleep(0.05)
        time.sleep(max(0.0, lease_ends - time.time()))
        assert actuator.wait_idle(60)
        runs = len(actuator.runs)
        time.sleep(1.5)
        assert len(actuator.runs) == runs, "a run started after the lease ran out"
        assert all(run.started < lease_ends for run in actuator.runs)
        assert not actuator.observe().busy
        actuator.hold_lease(time.monotonic() + 30)  # renewed: it acts again
        deadline = time.monotonic() + 60
        while len(actuator.runs) == runs:
            assert time.monotonic() < deadline, "a renewed lease did not resume the runs"
            time.sleep(0.05)
    finally:
        actuator.close()


class RecordingActuator:
    """An actuator that acts on nothing and records what the controller asks of it (calls, and each lease)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.leases: list[float] = []

    def observe(self) -> ActuatorState:
        return ActuatorState(hosts={})

    def apply(self, desired: Mapping[str, frozenset[str]]) -> None:
        self.calls.append("apply")

    def close(self) -> None:
        self.calls.append("close")

    def stand_down(self) -> None:
        self.calls.append("stand_down")

    def verify_all(self) -> None:
        self.calls.append("verify_all")

    def hold_lease(self, until: float) -> None:
        self.leases.append(until)


def controller_with_recorder(
    r: redis.Redis, keys: Keys, token: str
) -> tuple[Controller, RecordingActuator, ControllerSettings]:
    """A controller that holds the leader lock as ``token`` and acts through a recording actuator."""
    settings = ControllerSettings()
    source = RedisSignalSource(r, keys, settings)
    lock = LeaderLock(r, keys.controller_leader, settings.leader_ttl_s, token=token)
    recorder = RecordingActuator()
    ctl = Controller(r, keys, settings, make_policy("queue-model", settings), source, recorder, lock)
    return ctl, recorder, settings


def test_each_renewal_of_the_lock_extends_the_actuator_lease(r: redis.Redis, keys: Keys) -> None:
    ctl, recorder, settings = controller_with_recorder(r, keys, token="me")
    leases = recorder.leases
    before = time.monotonic()
    assert ctl.hold_lock() and ctl.hold_lock()
    assert len(leases) == 2 and leases[0] <= leases[1]
    assert before + settings.leader_ttl_s <= leases[0] <= time.monotonic() + settings.leader_ttl_s
    r.set(keys.controller_leader, "someone else")
    assert not ctl.hold_lock()
    assert len(leases) == 2, "a controller that does not hold the lock extended the lease"


def test_a_new_leader_has_every_host_asserted_once(r: redis.Redis, keys: Keys) -> None:
    """Game day: a leader killed mid-run (stopping a service) left it running, and the new leader, believing the
    host ran nothing, never ran there: the fleet never converged. Taking over asserts every host once."""
    ctl, recorder, _ = controller_with_recorder(r, keys, token="new")
    assert ctl.hold_lock() and ctl.hold_lock()
    assert recorder.calls.count("verify_all") == 1, "once, on becoming leader"


def test_an_actuator_told_to_verify_runs_on_hosts_it_believes_are_as_wanted(tmp_path: Path) -> None:
    config = AnsibleActuatorConfig(
        inventory=refusing_inventory(tmp_path), data_dir=tmp_path / "runner", timeout_s=60, retry_unreachable_s=60.0
    )
    actuator = AnsibleActuator(config, running={"w1": frozenset({"1"})})
    try:
        actuator.apply({"w1": frozenset({"1"})})
        assert actuator.wait_idle(30) and actuator.runs == [], "believed as wanted: nothing to run"
        actuator.verify_all()
        assert actuator.wait_idle(60)
        assert [sorted(run.hosts) for run in actuator.runs] == [["w1"]], "one run asserted the host"
    finally:
        actuator.close()


def test_losing_the_leader_lock_stands_the_actuator_down(r: redis.Redis, keys: Keys) -> None:
    ctl, recorder, _ = controller_with_recorder(r, keys, token="old")
    calls = recorder.calls
    assert ctl.hold_lock()
    assert "stand_down" not in calls
    r.set(keys.controller_leader, "new")  # another controller took over while this one was paused
    assert not ctl.hold_lock()
    assert calls.count("stand_down") == 1


def ok(host: str, task: str) -> dict[str, object]:
    return {"event": "runner_on_ok", "event_data": {"host": host, "task": task, "res": {}}}


def test_a_hung_host_does_not_fail_its_batch_mate() -> None:
    """ansible-runner's events of a run that timed out on ``b``: ``a`` finished scale.yml, ``b`` never answered."""
    due = {"a": frozenset({"1", "2"}), "b": frozenset({"3"})}
    events = [ok("a", "Apply the worker programs to supervisord"), ok("a", FINISHED_TASK)]
    failed = host_failures(due, "timeout", 254, events, {}, 300.0)
    assert set(failed) == {"b"} and "timeout" in failed["b"]
    # an unreachable host in a failed run; its batch-mate finished
    unreachable = {"event": "runner_on_unreachable", "event_data": {"host": "b", "res": {"msg": "ssh: timed out"}}}
    stats = {"ok": {"a": 3}, "dark": {"b": 1}}
    failed = host_failures(due, "failed", 4, [*events, unreachable], stats, 12.0)
    assert failed == {"b": "unreachable: ssh: timed out"}
    both = [*events, ok("b", FINISHED_TASK)]
    assert host_failures(due, "successful", 0, both, {"ok": {"a": 3, "b": 3}}, 5.0) == {}


def applied(host: str, answer: str) -> dict[str, object]:
    """The role's step ok, with raw's output as a tty gives it (stderr joined, the applier's JSON line last)."""
    lines = ["Shared connection to 10.0.0.2 closed.", answer] if answer else []
    return {"event": "runner_on_ok", "event_data": {"host": host, "task": APPLY_TASK, "res": {"stdout_lines": lines}}}


def test_a_supervisord_host_is_finished_by_its_step_and_a_systemd_host_by_the_report() -> None:
    """scale.yml ends a supervisord host right after the step (no report task runs there): the step's answer is
    its report. A systemd host has systemd tasks after the step: only the report says it finished."""
    due = {"a": frozenset({"1"}), "b": frozenset({"2"}), "c": frozenset({"3"}), "d": frozenset({"4"})}
    events = [
        applied("a", '{"changed": true, "add": ["captcha-worker-1"], "remove": [], "service_manager": "supervisord"}'),
        applied("b", '{"changed": false, "service_manager": "systemd"}'),
        applied("c", "not json {"),
        applied("d", '{"changed": false, "service_manager": "systemd"}'),
        ok("d", FINISHED_TASK),
    ]
    failed = host_failures(due, "timeout", 254, events, {}, 60.0)
    assert set(failed) == {"b", "c"}, failed


def test_the_finished_marker_is_the_last_task_of_each_scale_play() -> None:
    plays = yaml.safe_load((REPO_ROOT / "playbooks" / "scale.yml").read_text(encoding="utf-8"))
    assert [play["tasks"][-1]["name"] for play in plays] == [FINISHED_TASK, FINISHED_TASK]
    # one play ends at once: the actuator's (it holds the hosts' lock itself) or a hand run's (it takes each one)
    ends = [(play["tasks"][0]["ansible.builtin.meta"], play["tasks"][0]["when"]) for play in plays]
    assert ends == [("end_play", "scale_take_lock | bool"), ("end_play", "not scale_take_lock | bool")]
    # the actuator's play: only meta tasks (weighed in ansible-playbook, no forked worker) around the role's one
    # step, and a supervisord host ends right after it
    first = plays[0]["tasks"]
    step = next(i for i, task in enumerate(first) if "ansible.builtin.import_role" in task)
    assert first[step]["ansible.builtin.import_role"]["tasks_from"] == "scale_apply.yml"
    assert all("ansible.builtin.meta" in task for task in first[:step])
    assert first[step + 1]["ansible.builtin.meta"] == "end_host"
    assert "supervisord" in first[step + 1]["when"]
    role_step = yaml.safe_load((REPO_ROOT / "roles" / "worker" / "tasks" / "scale_apply.yml").read_text())
    assert [task["name"] for task in role_step] == [APPLY_TASK]


def test_the_actuator_waits_for_a_host_a_roll_holds(tmp_path: Path, r: redis.Redis, keys: Keys) -> None:
    from captcha_fleet.controller.hosts.lock import RedisHostLock

    r.set(keys.host_lock("w1"), "roll-token", px=60_000)  # rolling_update.yml holds the host
    config = AnsibleActuatorConfig(inventory=refusing_inventory(tmp_path), data_dir=tmp_path / "runner", timeout_s=60)
    actuator = AnsibleActuator(config, host_lock=RedisHostLock(r, keys, token="ctl"))
    try:
        actuator.apply({"w1": frozenset({"1"})})
        assert not actuator.wait_idle(1.5)
        assert actuator.runs == [] and actuator.observe().busy
        # placed while the actuator waits: pending, not gone (the control loop re-placed such services as dead)
        assert actuator.observe().hosts["w1"].pending == {"1"}
        r.delete(keys.host_lock("w1"))  # the roll is done with it
        assert actuator.wait_idle(60)
        assert len(actuator.runs) == 1
        assert not r.exists(keys.host_lock("w1")), "the run gave the lock back"
    finally:
        actuator.close()


def test_a_later_message_less_event_does_not_hide_why_a_host_failed() -> None:
    due = {"a": frozenset({"1"})}
    cause = {"msg": "Failed to connect: Host key verification failed.\r\n"}
    events = [
        {"event": "runner_on_unreachable", "event_data": {"host": "a", "res": cause}},
        {"event": "runner_on_unreachable", "event_data": {"host": "a", "res": {}}},
    ]
    failed = host_failures(due, "failed", 4, events, {"dark": {"a": 1}}, 3.0)
    assert failed["a"].startswith("unreachable: host key verification failed"), failed


class SilentSshHost:
    """A loopback port that takes TCP connections and never says a word: SSH waits there for its timeout."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])

    def inventory(self, tmp_path: Path) -> Path:
        path = tmp_path / "hosts.yml"
        path.write_text(
            "all:\n  children:\n    workers:\n      hosts:\n"
            f"        w1: {{ansible_host: 127.0.0.1, ansible_port: {self.port}, ansible_timeout: 40}}\n",
            encoding="utf-8",
        )
        return path

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def a_run_holding_the_host_lock(tmp_path: Path, r: redis.Redis, keys: Keys) -> Iterator[AnsibleActuator]:
    """An actuator (host-lock TTL 1.5 s) whose run on a silent host is under way and has taken the host's lock."""
    from captcha_fleet.controller.hosts.lock import RedisHostLock

    host = SilentSshHost()
    config = AnsibleActuatorConfig(
        inventory=host.inventory(tmp_path), data_dir=tmp_path / "runner", timeout_s=60, host_lock_ttl_s=1.5
    )
    actuator = AnsibleActuator(config, host_lock=RedisHostLock(r, keys, token="ctl"))
    try:
        actuator.apply({"w1": frozenset({"1"})})
        deadline = time.monotonic() + 30
        while r.get(keys.host_lock("w1")) is None:
            assert time.monotonic() < deadline, "the run never took the host's lock"
            time.sleep(0.05)
        yield actuator
    finally:
        actuator.close()
        host.close()


def test_the_host_lock_is_renewed_while_a_run_outlasts_its_ttl(tmp_path: Path, r: redis.Redis, keys: Keys) -> None:
    """A short host-lock TTL (a cut-off leader's locks expire soon) held for as long as the run goes on."""
    with a_run_holding_the_host_lock(tmp_path, r, keys) as actuator:
        for _ in range(8):  # 4 s: more than twice the TTL
            time.sleep(0.5)
            assert r.get(keys.host_lock("w1")) == b"actuator:ctl", "the lock expired while the run went on"
        assert actuator.runs == [], "the run ended early: the test proves nothing"


def test_a_run_whose_host_lock_was_lost_is_cancelled(tmp_path: Path, r: redis.Redis, keys: Keys) -> None:
    """The lock expired (a long Redis outage) and someone else took the host: this run must stop acting on it."""
    with a_run_holding_the_host_lock(tmp_path, r, keys) as actuator:
        r.set(keys.host_lock("w1"), "roll-token", px=60_000)  # a rolling update holds the host now
        deadline = time.monotonic() + 35
        while not actuator.runs:
            assert time.monotonic() < deadline, "the run went on without its lock"
            time.sleep(0.1)
        assert actuator.runs[0].status == "canceled", actuator.runs[0]
        assert r.get(keys.host_lock("w1")) == b"roll-token", "the cancelled run released someone else's lock"


def test_a_host_failing_in_a_no_log_task_says_which_task_hid_the_cause() -> None:
    censored = {"censored": "the output has been hidden due to the fact that 'no_log: true' was specified"}
    events = [
        {"event": "runner_on_unreachable", "event_data": {"host": "a", "task": "Run the helper", "res": censored}}
    ]
    failed = host_failures({"a": frozenset({"1"})}, "failed", 4, events, {"dark": {"a": 1}}, 3.0)
    assert failed["a"] == "unreachable: Run the helper hides its output (no_log)"
