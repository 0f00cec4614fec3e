"""The Ansible actuator: worker services on an inventory of hosts, started and stopped by ``scale.yml``.

``apply`` records the desired instances per host and returns at once; one background thread runs
``playbooks/scale.yml`` through ansible-runner for the hosts whose desired set differs from what they run, with the
latest desired state (a newer ``apply`` during a run is picked up by the next run, never queued up). Each run gets
its own private data dir (removed afterwards, artifacts and all; leftovers of a killed controller are swept at
start) over the shared project dir; extravars hold only instance names, never a secret, and ansible-playbook gets
only the environment it needs (:func:`runner_env`): ansible-runner copies the whole process environment into
``artifacts/<ident>/command``, and the controller's holds ``REDIS_URL`` and ``CAPTCHAAI_KEY``. Host key checking
stays on (ansible-runner turns it off unless told). A run has a timeout above the workers' stop timeout; SSH uses
pipelining and ControlPersist (``ansible.cfg`` and the inventory), so the connection to a host is reused from one
run to the next.

A host that fails or is unreachable is marked (``reachable=False``, ``last_error``) and its share is moved to the
other hosts (:func:`captcha_fleet.controller.hosts.placement.replace_ineligible`); it is probed again every
``retry_unreachable_s``. Draining hosts (``{prefix}:draining:<host>``, read by :meth:`refresh_draining`) get no new
services. Nothing here ever blocks the control loop on a host.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import redis

from captcha_fleet.contract.config import ConfigError
from captcha_fleet.contract.inventory import Inventory, InventoryHost, read_inventory
from captcha_fleet.contract.sections import FieldParser, parse_fields

from ..hosts.placement import replace_ineligible
from ..hosts.roster import (
    RosterChange,
    follow_inventory,
    forget_retired,
    retired_source,
)
from ..hosts.state import HostState, instance_order
from .base import ActuatorState

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class AnsibleActuatorConfig:
    """Where the playbooks and the inventory are, and how to run them."""

    inventory: Path
    project_dir: Path = REPO_ROOT / "playbooks"
    roles_path: Path = REPO_ROOT / "roles"
    ansible_cfg: Path = REPO_ROOT / "ansible.cfg"
    playbook: str = "scale.yml"
    data_dir: Path = Path(tempfile.gettempdir()) / "captcha-fleet-runner"
    group: str = "workers"
    hosts: tuple[str, ...] = ()  # default: every host of ``group`` in the inventory
    max_services_per_host: int = 20
    # Above the worker's stop timeout (150 s by default): a scale-down waits for a draining worker to stop.
    timeout_s: int = 300
    retry_unreachable_s: float = 30.0
    # The per-host lock's TTL, renewed every third of it while a run goes on: short, so that a leader cut off
    # from Redis in mid-run (it cannot give the lock back) keeps the new leader off its hosts for no longer.
    host_lock_ttl_s: float = 30.0
    forks: int = 25
    # Move the share of an unreachable host to the others here. A controller that re-places lost services by
    # itself (captcha_fleet.controller.loop.Controller forgets services that neither run nor heartbeat) sets this
    # to False.
    replace_failed: bool = True
    ssh_private_key_file: str | None = None
    vault_password_file: Path | None = None  # for vault-encrypted inventory variables (a path, never the password)
    envvars: Mapping[str, str] = field(default_factory=dict)


def actuator_config_from_section(
    section: Mapping[str, Any], inventory: str | None = None, where: str = "ansible_actuator"
) -> AnsibleActuatorConfig:
    """The ``ansible_actuator:`` section of fleet.yml (as the controller role writes it), checked by name."""
    values = parse_fields(AnsibleActuatorConfig, section, where, _FIELD_PARSERS)
    if inventory:
        values["inventory"] = Path(inventory)
    if "inventory" not in values:
        raise ConfigError(f"{where}.inventory: required (or pass --inventory)")
    if not values["inventory"].exists():  # a file, a directory, a script or a plugin config
        raise ConfigError(f"{where}.inventory: {values['inventory']} does not exist")
    return AnsibleActuatorConfig(**values)


def _path(value: Any, _current: Any, _where: str) -> Path:
    return Path(str(value))


def _optional_path(value: Any, _current: Any, _where: str) -> Path | None:
    return None if value is None else Path(str(value))


def _host_names(value: Any, _current: Any, _where: str) -> tuple[str, ...]:
    return tuple(str(h) for h in value)


def _integer(value: Any, _current: Any, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    return value


def _lock_ttl(value: Any, _current: Any, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where}: expected a number of seconds above 0, got {value!r}")
    return value


def _as_given(value: Any, _current: Any, _where: str) -> Any:
    return value


# The other fields are taken as given, as they always were (the controller role writes them).
_FIELD_PARSERS: dict[str, FieldParser] = {
    **dict.fromkeys(("inventory", "project_dir", "roles_path", "ansible_cfg", "data_dir"), _path),
    "vault_password_file": _optional_path,
    "hosts": _host_names,
    **dict.fromkeys(("max_services_per_host", "timeout_s", "forks"), _integer),
    "host_lock_ttl_s": _lock_ttl,
    **dict.fromkeys(
        ("playbook", "group", "retry_unreachable_s", "replace_failed", "ssh_private_key_file", "envvars"), _as_given
    ),
}


class HostLock(Protocol):
    """The per-host lock shared with the playbooks.

    (:class:`captcha_fleet.controller.hosts.lock.RedisHostLock`)
    """

    def acquire(self, hosts: Iterable[str], ttl_s: float) -> set[str]: ...

    def renew(self, hosts: Iterable[str], ttl_s: float) -> set[str]: ...

    def release(self, hosts: Iterable[str]) -> None: ...


@dataclass(frozen=True)
class RunRecord:
    """One finished playbook run (the last few are kept for ``observe`` callers and tests)."""

    ident: str
    hosts: Mapping[str, frozenset[str]]
    status: str
    rc: int
    started: float
    seconds: float
    failed: Mapping[str, str]


# Variables of the controller's own environment ansible-playbook may see; everything else (secrets) stays out.
RUNNER_ENV_NAMES = frozenset(
    {"HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SSH_AUTH_SOCK", "PYTHONPATH"}
)
RUNNER_ENV_PREFIXES = ("ANSIBLE_", "AWX_", "RUNNER_")
RUN_DIR_PREFIX = "scale-"


def runner_env(prepared: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str]:
    """The environment for ansible-playbook: ``wanted`` plus what ansible-runner added, never the secrets.

    ``prepared`` is ansible-runner's environment (the process environment, ``wanted`` and its own settings).
    """
    keep = {
        name: value
        for name, value in prepared.items()
        if name in wanted or name in RUNNER_ENV_NAMES or name.startswith(RUNNER_ENV_PREFIXES)
    }
    return keep


# How often a running playbook checks whether it must stop (see _run).
CANCEL_POLL_S = 0.5


def sweep_run_dirs(data_dir: Path) -> list[Path]:
    """Remove the run dirs a killed controller left (their artifacts may name hosts and instances)."""
    if not data_dir.is_dir():
        return []
    stale = [p for p in data_dir.iterdir() if p.name.startswith(RUN_DIR_PREFIX) and p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    if stale:
        log.info("removed %d stale runner dirs under %s", len(stale), data_dir)
    return stale


def read_actuator_inventory(config: AnsibleActuatorConfig) -> Inventory:
    """The inventory as a playbook run sees it; each host's own variables apart (to re-declare a retiring host)."""
    return read_inventory(
        config.inventory, vault_password_file=config.vault_password_file, env=inventory_env(config), export=True
    )


def inventory_env(config: AnsibleActuatorConfig) -> dict[str, str]:
    """The Ansible settings the playbook runs use, so the inventory read sees the same plugins and paths."""
    return {"ANSIBLE_CONFIG": str(config.ansible_cfg)}


class AnsibleActuator:
    """A :class:`captcha_fleet.controller.actuators.base.ServiceActuator` over Ansible (see the module docstring)."""

    def __init__(
        self,
        config: AnsibleActuatorConfig,
        running: Mapping[str, frozenset[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        inspect_artifacts: Callable[[Path], None] | None = None,
        host_lock: HostLock | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.host_lock = host_lock
        self.inspect_artifacts = inspect_artifacts
        self._known: dict[str, InventoryHost] = {}  # each host as last read (to stop services on a retiring one)
        self._changes = RosterChange()
        if config.hosts:
            names = list(config.hosts)
        else:
            inventory = read_actuator_inventory(config)
            names = inventory.names(config.group)
            self._known = {h.name: h for h in inventory.hosts if h.name in names}
        if not names:
            raise ValueError(f"{config.inventory}: no hosts in group {config.group!r}")
        self._hosts: dict[str, HostState] = {
            n: HostState(
                name=n,
                max_services=config.max_services_per_host,
                running=frozenset((running or {}).get(n, frozenset())),
            )
            for n in names
        }
        self._desired: dict[str, frozenset[str]] | None = None
        self._unverified: set[str] = set()  # hosts whose services a run must assert (what runs there is a belief)
        self._lease_until: float | None = None  # None: no leader lease given (acting is not fenced)
        self._failed_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._running_run = False
        self._closed = False
        self._cancel = False
        self.runs: list[RunRecord] = []
        sweep_run_dirs(config.data_dir)
        self._thread = threading.Thread(target=self._loop, name="ansible-actuator", daemon=True)
        self._thread.start()

    # --- ServiceActuator -------------------------------------------------------------------------
    def observe(self) -> ActuatorState:
        """The hosts as last known (no remote call); ``busy`` while a run is in progress or due."""
        with self._lock:
            busy = self._running_run or self._due_locked() is not None
            return ActuatorState(hosts=self._hosts_with_queued_locked(), busy=busy)

    def _hosts_with_queued_locked(self) -> dict[str, HostState]:
        """The hosts, with the instances waiting for a run (another run is busy, a host lock is held) as pending:
        placed but not started yet is not gone (the control loop re-placed such services as dead)."""
        effective = self._effective_locked() or {}
        hosts = dict(self._hosts)
        for name, host in hosts.items():
            if not host.reachable or host.draining or name not in effective:
                continue
            queued = effective[name].symmetric_difference(host.running)
            if queued - host.pending:
                hosts[name] = replace(host, pending=host.pending | queued)
        return hosts

    def apply(self, desired: Mapping[str, frozenset[str]]) -> None:
        """Make each host run exactly ``desired[host]`` (a host left out runs nothing); returns at once."""
        with self._lock:
            for name in desired:
                if name not in self._hosts:
                    log.warning("ignoring desired services on %s: not in the inventory", name)
            self._desired = {n: frozenset(desired.get(n, frozenset())) for n in self._hosts}
            self._forget_retired_locked()
            self._wake.notify_all()

    # --- the inventory, re-read (captcha_fleet.controller.inventory_refresh) ---------------------------------------
    def follow_inventory(self, inventory: Inventory) -> RosterChange:
        """New hosts of the group join; vanished ones retire (drained, stopped, then forgotten)."""
        names = inventory.names(self.config.group)
        if not names:  # a cloud API that answered "nothing" by mistake must not drain the whole fleet
            log.error(
                "inventory %s: no host in group %r; keeping the hosts as they were", inventory.source, self.config.group
            )
            return RosterChange()
        with self._lock:
            change = follow_inventory(self._hosts, names, self.config.max_services_per_host)
            self._known.update({h.name: h for h in inventory.hosts if h.name in names})
            self._changes = self._changes.merge(change)
            self._wake.notify_all()
        for name in change.added:
            log.info("host %s joined the inventory: it takes new services", name)
        for name in change.retiring:
            log.warning("host %s left the inventory: its services are drained, then it is forgotten", name)
        for name in change.returned:
            log.info("host %s is back in the inventory", name)
        return change

    def take_inventory_changes(self) -> RosterChange:
        """What changed in the roster since the last call (the control loop puts it in the decision log)."""
        with self._lock:
            change, self._changes = self._changes, RosterChange()
            return change

    def _forget_retired_locked(self) -> None:
        if self._running_run:
            return  # a run may be stopping its services right now
        change = forget_retired(self._hosts, self._desired)
        for name in change.forgotten:
            log.info("host %s forgotten: it left the inventory and runs no service", name)
            self._known.pop(name, None)
            self._failed_at.pop(name, None)
            if self._desired is not None:
                self._desired.pop(name, None)
        if change:
            self._changes = self._changes.merge(change)

    def _inventory_sources(self, due: Mapping[str, frozenset[str]], scratch: Path) -> str | list[str]:
        """The inventory, plus a declaration of the retiring hosts of this run (gone from it, still running)."""
        main = str(self.config.inventory.resolve())
        with self._lock:
            retiring = [self._known[n] for n in due if self._hosts[n].retiring and n in self._known]
        if not retiring:
            return main
        return [main, str(retired_source(retiring, scratch / "retiring.yml"))]

    def hold_lease(self, until: float) -> None:
        """The leader renewed its lock: runs may start until ``until`` (``time.monotonic()``), no later."""
        with self._lock:
            self._lease_until = until
            self._wake.notify_all()

    def verify_all(self) -> None:
        """A new leader: what this actuator believes runs is not what a dead leader's cut-off run left behind, so
        the next run asserts every host's services (it stops a service the dead leader was stopping)."""
        with self._lock:
            self._unverified = set(self._hosts)
            self._wake.notify_all()

    def stand_down(self) -> None:
        """Leadership lost: forget the desired state and cancel a run in progress (the new leader acts now)."""
        with self._lock:
            self._desired = None
            self._cancel = True
            self._wake.notify_all()

    def close(self) -> None:
        """Stop the background thread (cancelling a run in progress); the services stay as they are."""
        with self._lock:
            self._closed = True
            self._cancel = True
            self._wake.notify_all()
        self._thread.join(timeout=self.config.timeout_s + 10)

    # --- extras ----------------------------------------------------------------------------------
    def set_draining(self, draining: Iterable[str]) -> None:
        """Mark hosts draining (a rolling update or decommission is working on them)."""
        names = set(draining)
        with self._lock:
            for name, host in self._hosts.items():
                if host.draining != (name in names):
                    self._hosts[name] = replace(host, draining=name in names)
            self._wake.notify_all()

    def refresh_draining(self, client: Any, keys: Any) -> None:
        """Read ``{prefix}:draining:<host>`` for every host (one round trip) and mark them."""
        names = list(self._hosts)
        values = client.mget([keys.host_draining(n) for n in names]) if names else []
        self.set_draining(n for n, v in zip(names, values, strict=True) if v is not None)

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no run is in progress or due (tests and benchmarks; the control loop never calls it)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._running_run or self._due_locked() is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(timeout=min(left, 0.2))
        return True

    # --- internals -------------------------------------------------------------------------------
    def _effective_locked(self) -> dict[str, frozenset[str]] | None:
        if self._desired is None:
            return None
        if not self.config.replace_failed:
            return dict(self._desired)
        return replace_ineligible(self._desired, self._hosts)

    def _due_locked(self) -> dict[str, frozenset[str]] | None:
        """Hosts (with their wanted instances) a run should change now, or None."""
        effective = self._effective_locked()
        if effective is None or not self._lease_valid_locked():
            return None
        now = self.clock()
        due: dict[str, frozenset[str]] = {}
        for name, host in self._hosts.items():
            if not host.reachable:
                # probe it again now and then: the run stops whatever it still runs (its share moved away)
                if now - self._failed_at.get(name, 0.0) >= self.config.retry_unreachable_s:
                    due[name] = effective.get(name, frozenset())
                continue
            if host.draining:
                continue
            wanted = effective.get(name, host.running)
            if wanted != host.running or name in self._unverified:
                due[name] = wanted
        return due or None

    def _lease_valid_locked(self) -> bool:
        return self._lease_until is None or time.monotonic() < self._lease_until

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and self._due_locked() is None:
                    self._wake.wait(timeout=1.0)
                if self._closed:
                    return
                due = self._due_locked() or {}
            locked = self._lock_hosts(due)
            if not locked:
                with self._lock:
                    self._wake.wait(timeout=1.0)  # a roll or decommission holds them: try again shortly
                continue
            keeper = self._keep_locked(locked)
            try:
                self._run_locked_hosts({n: w for n, w in due.items() if n in locked})
            finally:
                keeper.set()
                # The hosts are given back before the run counts as over, so whoever sees it idle sees them free.
                if self.host_lock is not None:
                    self.host_lock.release(locked)
                with self._lock:
                    self._running_run = False
                    self._wake.notify_all()

    def _lock_hosts(self, due: Mapping[str, frozenset[str]]) -> set[str]:
        """The due hosts this run may touch: all of them, or those whose per-host lock we got."""
        if self.host_lock is None:
            return set(due)
        return self.host_lock.acquire(sorted(due), ttl_s=self.config.host_lock_ttl_s)

    def _keep_locked(self, hosts: set[str]) -> threading.Event:
        """Renew the hosts' locks while the run goes on (set the returned event to stop); cancel the run when
        a lock is lost, or could not be renewed for a whole TTL (it has expired: someone else may act there)."""
        done = threading.Event()
        host_lock = self.host_lock
        if host_lock is None or not hosts:
            return done
        ttl_s = self.config.host_lock_ttl_s

        def keep() -> None:
            renewed_at = time.monotonic()
            while not done.wait(ttl_s / 3):
                try:
                    held = host_lock.renew(hosts, ttl_s)
                except redis.RedisError as exc:
                    if time.monotonic() - renewed_at < ttl_s:
                        log.warning("host locks not renewed (trying again): %s", exc)
                        continue
                    held = set()
                if held == hosts:
                    renewed_at = time.monotonic()
                    continue
                log.warning("host locks lost for %s: cancelling the scale run", sorted(hosts - held))
                with self._lock:
                    self._cancel = True
                return

        threading.Thread(target=keep, name="host-lock-keeper", daemon=True).start()
        return done

    def _run_locked_hosts(self, due: Mapping[str, frozenset[str]]) -> None:
        with self._lock:
            if self._closed or self._desired is None or not self._lease_valid_locked():
                # stood down or the lease ran out while the host locks were taken: a new leader may be acting
                return
            self._running_run = True
            self._cancel = False
            for name, wanted in due.items():
                host = self._hosts[name]
                self._hosts[name] = replace(host, pending=wanted.symmetric_difference(host.running))
        try:
            record = self._run(due)
        except Exception as exc:  # a broken runner must not kill the thread
            log.exception("scale run failed")
            record = RunRecord(
                ident="",
                hosts=due,
                status="error",
                rc=-1,
                started=time.time(),
                seconds=0.0,
                failed={n: f"runner error: {exc}" for n in due},
            )
        with self._lock:
            self._record_locked(record)

    def _record_locked(self, record: RunRecord) -> None:
        self.runs = [*self.runs[-19:], record]
        if record.status == "canceled" and (self._closed or self._desired is None):
            return  # cancelled by close() or stand_down(): says nothing about the hosts
        now = self.clock()
        for name, wanted in record.hosts.items():
            host = self._hosts[name]
            if name in record.failed:
                self._failed_at[name] = now
                self._hosts[name] = replace(
                    host, running=frozenset(), pending=frozenset(), reachable=False, last_error=record.failed[name]
                )
                log.warning("host %s marked unreachable: %s", name, record.failed[name])
            else:
                if not host.reachable:
                    log.info("host %s is reachable again", name)
                self._failed_at.pop(name, None)
                self._unverified.discard(name)
                self._hosts[name] = replace(host, running=wanted, pending=frozenset(), reachable=True, last_error=None)

    def _cancel_callback(self) -> bool:
        return self._cancel

    def _run(self, due: Mapping[str, frozenset[str]]) -> RunRecord:
        from ansible_runner.interface import init_runner  # heavy; only when a run is needed

        cfg = self.config
        cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=cfg.data_dir))
        scratch = Path(tempfile.mkdtemp(prefix="scale-inventory-"))  # never inside the runner's artifacts
        ident = uuid.uuid4().hex[:12]
        extravars: dict[str, object] = {
            "captcha_worker_instances": {n: sorted(w, key=instance_order) for n, w in due.items()}
        }
        if self.host_lock is not None:
            extravars["captcha_host_lock_held"] = True  # we hold the hosts' lock: the playbook must not wait for it
        envvars = {
            "ANSIBLE_CONFIG": str(cfg.ansible_cfg),
            "ANSIBLE_ROLES_PATH": str(cfg.roles_path),
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            # ansible-playbook from the same environment as this process (a venv need not be on PATH)
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]),
            # ansible-runner sets False unless given; an unknown or changed host key must fail the host
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_SSH_EXTRA_ARGS": "-o StrictHostKeyChecking=yes",
            **dict(cfg.envvars),
        }
        if cfg.ssh_private_key_file:
            envvars["ANSIBLE_PRIVATE_KEY_FILE"] = cfg.ssh_private_key_file
        if cfg.vault_password_file:
            envvars["ANSIBLE_VAULT_PASSWORD_FILE"] = str(cfg.vault_password_file)
        started_wall = time.time()
        started = time.monotonic()
        log.info("scale run %s: %s", ident, {n: sorted(w) for n, w in due.items()})
        try:
            runner = init_runner(
                private_data_dir=str(private),
                project_dir=str(cfg.project_dir),
                playbook=cfg.playbook,
                inventory=self._inventory_sources(due, scratch),
                limit=",".join(sorted(due)),
                extravars=extravars,
                envvars=envvars,
                forks=cfg.forks,
                timeout=cfg.timeout_s,
                ident=ident,
                quiet=True,
                rotate_artifacts=1,
                suppress_env_files=True,
                cancel_callback=self._cancel_callback,
                omit_event_data=False,
            )
            runner.config.env = runner_env(runner.config.env, envvars)
            # ansible-runner asks cancel_callback once per pexpect timeout (5 s by default): a lost host lock or a
            # stand-down must stop the run well within a lock's TTL, not up to 5 s later
            runner.config.pexpect_timeout = CANCEL_POLL_S
            runner.run()
            status, rc = str(runner.status), int(runner.rc if runner.rc is not None else -1)
            failed = host_failures(due, status, rc, list(runner.events), runner.stats or {}, time.monotonic() - started)
            if self.inspect_artifacts is not None:
                self.inspect_artifacts(private)
        finally:
            shutil.rmtree(private, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)
        seconds = time.monotonic() - started
        log.info("scale run %s: %s in %.2fs, failed: %s", ident, status, seconds, failed or "none")
        return RunRecord(ident, dict(due), status, rc, started_wall, seconds, failed)


# The last task of scale.yml: a host with this task ok has applied its change, whatever became of the others.
FINISHED_TASK = "Report the applied instances"
# The role's one remote step; a supervisord host ends the play with it (its answer names the service manager).
APPLY_TASK = "Apply the worker programs to supervisord"


def host_failures(
    due: Mapping[str, frozenset[str]],
    status: str,
    rc: int,
    events: Sequence[Mapping[str, Any]],
    stats: Mapping[str, Any],
    seconds: float,
) -> dict[str, str]:
    """Host -> error, host by host from the run's events: a run that timed out on one hung host does not fail the
    hosts of its batch that finished (they applied their change)."""
    errors = _failed_hosts(events, stats, due)
    finished = _finished_hosts(events)
    if status == "successful":
        return errors
    for name in due:
        if name in finished or name in errors:
            continue
        if status in {"timeout", "canceled"}:
            errors[name] = f"scale run {status} after {seconds:.0f}s before this host finished"
        else:
            errors[name] = f"scale run {status} (rc {rc}) without a result from this host"
    return errors


def _finished_hosts(events: Sequence[Mapping[str, Any]]) -> set[str]:
    """Hosts that applied their change: the report task ok, or (supervisord, where the play ends with it) the
    role's step ok with an answer that names supervisord."""
    finished: set[str] = set()
    for event in events:
        if event.get("event") != "runner_on_ok":
            continue
        data = event.get("event_data") or {}
        task = data.get("task")
        by_step = task == APPLY_TASK and applier_answer(data).get("service_manager") == "supervisord"
        if task == FINISHED_TASK or by_step:
            finished.add(str(data.get("host")))
    return finished


def applier_answer(data: Mapping[str, Any]) -> dict[str, Any]:
    """The applier's one JSON line from the scale step's event data (raw's output is a tty's: stderr joined), or
    {} when there is none. The role reads it the same way (``worker_scale_answer``, roles/worker/vars/main.yml)."""
    res = data.get("res") or {}
    lines = res.get("stdout_lines") or str(res.get("stdout") or "").splitlines()
    for line in reversed([str(x) for x in lines]):
        if line.startswith("{"):
            try:
                answer = json.loads(line)
            except ValueError:
                return {}
            return answer if isinstance(answer, dict) else {}
    return {}


_RESULT_KEYS = ("ok", "changed", "skipped", "dark", "failures", "ignored", "rescued")
_FAILURE_EVENTS = frozenset({"runner_on_unreachable", "runner_on_failed"})


def _failed_hosts(
    events: Sequence[Mapping[str, Any]], stats: Mapping[str, Any], due: Mapping[str, frozenset[str]]
) -> dict[str, str]:
    """Host -> error for every host that failed or was unreachable in the run (from stats and events)."""
    bad = set((stats.get("dark") or {}).keys()) | set((stats.get("failures") or {}).keys())
    errors = _event_errors(events, due)
    for host in bad:
        errors.setdefault(host, "failed")
    for host in _hosts_without_result(stats, due):
        errors.setdefault(host, "no result from the run")
    return errors


def _hosts_without_result(stats: Mapping[str, Any], due: Mapping[str, frozenset[str]]) -> list[str]:
    """Due hosts the run's stats do not mention at all (none when there are no stats to go by)."""
    if not stats:
        return []
    seen: set[str] = set()
    for key in _RESULT_KEYS:
        seen |= set((stats.get(key) or {}).keys())
    return [host for host in due if host not in seen]


def _event_errors(events: Sequence[Mapping[str, Any]], due: Mapping[str, frozenset[str]]) -> dict[str, str]:
    """Host -> error from the failure events of due hosts: the first message is the cause."""
    errors: dict[str, str] = {}
    bare: set[str] = set()  # hosts whose error so far has no message
    for event in events:
        failure = _event_failure(event, due)
        if failure is None:
            continue
        host, kind, msg = failure
        if host in errors and (not msg or host not in bare):
            continue  # the first message is the cause; a later event (an ``always`` task) must not hide it
        errors[host] = _error_text(kind, msg)
        if msg:
            bare.discard(host)
        else:
            bare.add(host)
    return errors


def _event_failure(event: Mapping[str, Any], due: Mapping[str, frozenset[str]]) -> tuple[str, str, str] | None:
    """(host, event kind, message) of a failure event on a due host that does not ignore errors, else None."""
    kind = event.get("event")
    if kind not in _FAILURE_EVENTS:
        return None
    data = event.get("event_data") or {}
    host = str(data.get("host") or "")
    if host not in due or data.get("ignore_errors"):
        return None
    return host, str(kind), _event_message(data)


def _event_message(data: Mapping[str, Any]) -> str:
    """The failure's message; a ``no_log`` task's censored result says so rather than nothing."""
    res = data.get("res") or {}
    msg = str(res.get("msg") or res.get("stderr") or "")
    if not msg and res.get("censored"):
        msg = f"{data.get('task') or 'a task'} hides its output (no_log)"
    return msg


def _error_text(kind: str, msg: str) -> str:
    """``unreachable: ...`` or ``failed: ...``; a host-key failure gets a hint at known_hosts."""
    label = "unreachable" if kind == "runner_on_unreachable" else "failed"
    if "Host key verification failed" in msg:
        msg = "host key verification failed: the host's SSH key is unknown or changed (check known_hosts)"
    return f"{label}: {(msg or kind).strip()[:300]}"
