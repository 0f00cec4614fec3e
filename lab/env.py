"""The lab set-up the lab tests and the benchmarks share: a Redis and the sandbox on the lab bridge, release
snapshots, a playbook runner over a lab (:class:`LabEnv`), and the one way to bring a lab up (:func:`fresh_lab`).

The pytest fixture is in ``tests/lab/conftest.py``; the benchmarks under ``bench/`` import this module directly
(they must not import tests).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import redis

from captcha_fleet.contract.fleet_snapshot import read_snapshot
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.methods import first_poll_delays
from captcha_fleet.contract.records import Heartbeat
from captcha_fleet.local_servers.redis_server import RedisServer, free_port, terminate
from lab.labctl import Lab, LabError

REPO_ROOT = Path(__file__).resolve().parent.parent
SUPERVISOR_APPLY = REPO_ROOT / "roles" / "worker" / "files" / "supervisor_apply.py"

# Another checkout may run its own lab beside this one under another name and subnet (e.g. "ctestb", 10.77.10.0/24).
LAB_NAME = os.environ.get("CAPTCHA_LAB_NAME", "ctest")
LAB_SUBNET = os.environ.get("CAPTCHA_LAB_SUBNET", "10.77.9.0/24")
LAB_BASE = Path(os.environ.get("CAPTCHA_LAB_BASE", "/var/lib/captcha-lab"))
WHEELHOUSE = Path(os.environ.get("CAPTCHA_FLEET_WHEELHOUSE", "/var/cache/captcha-fleet/wheelhouse"))


class LabRedis(RedisServer):
    """A password-protected redis-server on the lab bridge (and loopback); the password never appears in argv."""

    password: str  # always set here

    def __init__(self, host: str, password: str) -> None:
        if shutil.which("redis-server") is None:
            raise LabError("redis-server is not installed")
        super().__init__(host=host, port=free_port("127.0.0.1"), password=password, also_bind=("127.0.0.1",))

    def start(self, timeout_s: float = 10.0) -> LabRedis:
        super().start(timeout_s)
        return self


@dataclass
class PlaybookResult:
    """What a playbook run left behind: status, rc, per-host stats and the events (for assertions)."""

    status: str
    rc: int
    stats: Mapping[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    stdout: str = ""

    def failed_tasks(self) -> list[tuple[str, str, str]]:
        """(host, task, what it said) of each failed or unreachable task: the recap's tail does not show them."""
        failed = []
        for event in self.events:
            if event.get("event") in ("runner_on_failed", "runner_on_unreachable"):
                data = event.get("event_data") or {}
                res = data.get("res") or {}
                said = str(res.get("stdout") or res.get("msg") or "")[-400:]
                failed.append((str(data.get("host")), str(data.get("task")), said))
        return failed

    def total(self, key: str) -> int:
        """Sum of one stats counter (``changed``, ``failures``, ``dark``, ``ok``) over all hosts."""
        return sum(int(v) for v in (self.stats.get(key) or {}).values())


WORKER_SETTINGS: dict[str, Any] = {
    "heartbeat_interval_s": 0.5,
    "heartbeat_ttl_s": 3.0,
    "reaper_interval_s": 1.0,
    "drain_timeout_s": 10.0,
    "claim_timeout_s": 0.5,
    "initial_slots": 10,
}
# The sandbox runs at 1/100 of real time; the workers' API timings are scaled the same way.
API_SETTINGS: dict[str, Any] = {
    "first_poll_delay_s": first_poll_delays(0.01),
    "poll_interval_s": 0.05,
    "task_deadline_s": 30.0,
    "backoff_base_s": 0.01,
    "backoff_max_s": 0.2,
    "connect_timeout_s": 2.0,
    "read_timeout_s": 2.0,
}


def snapshot_source(
    dest: Path, version: str | None = None, broken: bool = False, selfcheck_fails: bool = False
) -> Path:
    """Copy the project (pyproject and packages) to ``dest``: a stable source for releases while the tree moves.

    ``version`` rewrites the version in pyproject.toml and ``captcha_fleet/__init__.py``; ``broken`` makes the
    worker exit at start (a release whose health gate must fail); ``selfcheck_fails`` leaves the worker running
    but makes the release's Redis self-check fail (a release whose heartbeats pass and whose self-check must not).
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "pyproject.toml", dest / "pyproject.toml")
    if (REPO_ROOT / "README.md").exists():
        shutil.copy2(REPO_ROOT / "README.md", dest / "README.md")
    for pkg in sorted(
        p for p in REPO_ROOT.iterdir() if (p / "__init__.py").exists() and p.name not in {"tests", "lab"}
    ):
        shutil.copytree(pkg, dest / pkg.name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if version is not None:
        for rel, pattern in (("pyproject.toml", 'version = "{}"'), ("captcha_fleet/__init__.py", '__version__ = "{}"')):
            path = dest / rel
            text = path.read_text(encoding="utf-8")
            current = pattern.format(_current_version())
            assert current in text, f"{rel}: {current!r} not found"
            path.write_text(text.replace(current, pattern.format(version), 1), encoding="utf-8")
    if broken:
        cli = dest / "worker" / "cli.py"
        text = cli.read_text(encoding="utf-8")
        marker = '    """Start the service and block until it has drained."""\n'
        assert marker in text, "worker/cli.py changed: update snapshot_source(broken=True)"
        cli.write_text(text.replace(marker, marker + '    raise SystemExit("a broken release")\n', 1), encoding="utf-8")
    if selfcheck_fails:
        checks = dest / "captcha_fleet" / "apps" / "doctor" / "checks.py"
        text = checks.read_text(encoding="utf-8")
        marker = "def check_redis(config: FleetConfig, timeout_s: float) -> CheckResult:\n"
        assert marker in text, (
            "captcha_fleet/apps/doctor/checks.py changed: update snapshot_source(selfcheck_fails=True)"
        )
        text += (
            "\n\n_check_redis_ok = check_redis\n\n\n"
            "def check_redis(config: FleetConfig, timeout_s: float) -> CheckResult:  # noqa: F811\n"
            "    _check_redis_ok(config, timeout_s)\n"
            '    return CheckResult("redis", Status.FAIL, "a release whose self-check fails")\n'
        )
        checks.write_text(text, encoding="utf-8")
    return dest


def _current_version() -> str:
    text = (REPO_ROOT / "captcha_fleet" / "__init__.py").read_text(encoding="utf-8")
    return text.split('__version__ = "', 1)[1].split('"', 1)[0]


class Sandbox:
    """The CaptchaAI-compatible sandbox on the lab bridge, at 1/100 of real time."""

    def __init__(self, host: str, workdir: Path, time_scale: float = 0.01) -> None:
        self.host = host
        self.time_scale = time_scale
        self.port_file = workdir / "sandbox.port"
        self.log = workdir / "sandbox.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Sandbox:
        self.port_file.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(REPO_ROOT / ".venv" / "bin" / "captcha-fleet"), "sandbox", "--host", self.host, "--port", "0",
                 "--port-file", str(self.port_file), "--time-scale", str(self.time_scale), "--seed", "7",
                 "--log-level", "WARNING"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox did not start; see {self.log}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text().strip())
        return self

    def stop(self) -> None:
        terminate(self.process, timeout_s=10)


@dataclass
class LabEnv:
    """A running lab: hosts, inventory, Redis on the bridge, and a way to run playbooks against it."""

    lab: Lab
    redis: LabRedis
    key_prefix: str
    secret_key: str
    source: Path
    sandbox: Sandbox | None = None

    @property
    def inventory(self) -> Path:
        return self.lab.inventory_path

    @property
    def hosts(self) -> list[str]:
        return self.lab.host_names()

    def base_vars(self) -> dict[str, Any]:
        """Inventory variables the lab tests share (the secrets stay in the 0600 inventory, never in argv)."""
        return {
            "worker_redis_url": self.redis.url,
            "worker_api_key": self.secret_key,
            "worker_api_base": self.sandbox.url if self.sandbox else f"http://{self.lab.gateway}:1",
            "worker_key_prefix": self.key_prefix,
            "worker_wheelhouse_dir": str(WHEELHOUSE),
            "worker_source_dir": str(self.source),
            "worker_settings": WORKER_SETTINGS,
            "worker_api_settings": API_SETTINGS,
            "worker_stop_timeout_s": 20,
            "worker_drain_deadline_s": 20,
            "worker_health_timeout_s": 20,
            "worker_canary_timeout_s": 20,
        }

    def write_inventory(self, **extra: Any) -> None:
        merged = self.base_vars()
        merged.update(extra)
        self.lab.write_inventory(merged)

    def run_playbook(
        self,
        playbook: str,
        extravars: Mapping[str, Any] | None = None,
        limit: str | None = None,
        timeout_s: int = 600,
        inventory: Path | None = None,
        envvars: Mapping[str, str] | None = None,
        cancel: Callable[[], bool] | None = None,
        inspect: Callable[[Path], None] | None = None,
        check: bool = False,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> PlaybookResult:
        """Run ``playbooks/<playbook>`` through ansible-runner in a private data dir, removed afterwards.

        ``inventory`` replaces the lab's own; ``envvars`` adds to the environment (e.g. a vault password file);
        ``cancel`` returning True stops the run (an operator's Ctrl-C, a lost control machine); ``inspect`` is
        called with the data dir after the run, before it is removed (a benchmark greps it for secrets); ``check``
        runs it with ``--check``; ``on_event`` sees each runner event as it happens (a test stops a run at a
        task). ``cancel`` is asked every 0.2 s, so a stop lands within a fraction of a second of its marker.
        """
        from ansible_runner.interface import init_runner

        data_dir = Path(tempfile.mkdtemp(prefix="captcha-lab-run-"))
        try:
            runner = init_runner(
                private_data_dir=str(data_dir),
                project_dir=str(REPO_ROOT / "playbooks"),
                playbook=playbook,
                inventory=str(inventory or self.inventory),
                extravars=dict(extravars or {}),
                limit=limit,
                cmdline="--check" if check else None,
                quiet=True,
                timeout=timeout_s,
                envvars={
                    "PATH": os.pathsep.join(
                        [str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]
                    ),
                    "ANSIBLE_ROLES_PATH": str(REPO_ROOT / "roles"),
                    "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
                    **dict(envvars or {}),
                },
                ident=uuid.uuid4().hex,
                cancel_callback=cancel,
                event_handler=_event_handler(on_event),
            )
            runner.config.pexpect_timeout = 0.2  # how often cancel is asked (5 s by default)
            runner.run()
            events = list(runner.events)
            stdout = runner.stdout.read() if runner.stdout else ""
            result = PlaybookResult(
                status=str(runner.status),
                rc=int(runner.rc),
                stats=runner.stats or {},
                events=events,
                stdout=stdout,
            )
            result_artifacts = list(data_dir.rglob("*"))
            result.events.append({"_artifact_files": [str(p) for p in result_artifacts]})
            if inspect is not None:
                inspect(data_dir)
            return result
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)

    def supervisorctl(self, host: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``supervisorctl`` against the host's own supervisord (through its socket in the host root)."""
        return subprocess.run(
            ["supervisorctl", "-c", str(self._supervisord_conf(host)), *args],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip

    def programs(self, host: str) -> dict[str, tuple[str, int]]:
        """Program name -> (state, pid) of the host's supervisord, over its XML-RPC socket: the lab tests poll this
        often, and a ``supervisorctl`` process costs 0.25 s of CPU each time."""
        supervisor = supervisor_rpc(self._supervisord_conf(host))
        return {p["name"]: (p["statename"], p["pid"]) for p in supervisor.getAllProcessInfo()}

    def supervisor(self, host: str) -> Any:
        """The host's supervisord XML-RPC namespace (stopProcess, startProcess, signalProcess, ...)."""
        return supervisor_rpc(self._supervisord_conf(host))

    def root(self, host: str) -> Path:
        """The host's root directory as seen from here (its /opt, /etc and /var/log are below it)."""
        return Path(next(h.root for h in self.lab.hosts if h.name == host))

    def worker_base(self, host: str) -> Path:
        """The worker role's ``worker_base_dir`` on the host (releases, ``current``, the owed marks), seen from here."""
        return self.root(host) / "opt" / "captcha-fleet"

    def current_release(self, host: str) -> str:
        """The release directory name the host's ``current`` link points to."""
        return (self.worker_base(host) / "current").resolve().name

    def _supervisord_conf(self, host: str) -> Path:
        """The host's private supervisord.conf, in its root (its socket path is the one seen from here too)."""
        return self.root(host) / "etc" / "captcha-supervisor" / "supervisord.conf"

    def heartbeats(self, host: str | None = None) -> list[Heartbeat]:
        """The live worker heartbeats (optionally of one host)."""
        client = self.redis.client()
        try:
            return read_heartbeats(client, self.key_prefix, host)
        finally:
            client.close()


def supervisor_rpc(config: Path) -> Any:
    """The ``supervisor`` XML-RPC namespace of the supervisord ``config`` describes, through the worker role's own
    client (roles/worker/files/supervisor_apply.py: a standalone script the hosts run, so it is loaded by path)."""
    return load_script(SUPERVISOR_APPLY).connect(config)


@functools.cache
def load_script(path: Path) -> ModuleType:
    """A script the roles copy to hosts (a file, not a package module), loaded by path once; its directory is
    first on ``sys.path`` meanwhile, as when it runs, so that it finds the scripts installed beside it."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def read_heartbeats(client: redis.Redis, key_prefix: str, host: str | None = None) -> list[Heartbeat]:
    """The live worker heartbeats under ``key_prefix`` (optionally of one host), from any Redis of a lab fleet.

    Read through the contract's one fleet reader, as the controller, ``status`` and the fleet helper read them: the
    lab sees the workers they see, and a malformed heartbeat is skipped (and logged) here as there.
    """
    return [worker.beat for worker in read_snapshot(client, Keys(key_prefix), host=host).workers.values()]


def _event_handler(on_event: Callable[[dict[str, Any]], None] | None) -> Callable[[dict[str, Any]], bool] | None:
    """ansible-runner's handler shape (True keeps the event) around a plain observer."""
    if on_event is None:
        return None

    def handle(event: dict[str, Any]) -> bool:
        on_event(event)
        return True

    return handle


@contextmanager
def fresh_lab(
    hosts: int,
    name: str = LAB_NAME,
    subnet: str = LAB_SUBNET,
    base: Path = LAB_BASE,
    key_prefix: str = "lab",
    sandbox_time_scale: float | None = None,
    inventory_vars: Mapping[str, Any] | None = None,
    keep: bool = False,
    after_up: Callable[[Lab], None] | None = None,
) -> Iterator[LabEnv]:
    """The one lab set-up of the lab tests and the benchmarks: ``hosts`` lab hosts (leftovers of an interrupted run
    of ``name`` removed first), a Redis on the bridge, the sandbox unless ``sandbox_time_scale`` is None, a source
    snapshot and the inventory; all torn down afterwards (the hosts stay up with ``keep``).

    ``after_up`` runs once the hosts are up, before Redis and the sandbox start (a benchmark points TMPDIR at the
    controller host's files there, so the processes started next inherit it).
    """
    Lab.load(name, base).down()
    lab = Lab(name=name, subnet=subnet, base=base, service_user=f"captcha-{name}")
    lab.inventory_path = lab.dir / "inventory" / "hosts.yml"
    lab_redis: LabRedis | None = None
    sandbox: Sandbox | None = None
    try:
        lab.up(hosts)
        if after_up is not None:
            after_up(lab)
        lab_redis = LabRedis(lab.gateway, secrets.token_hex(16)).start()
        if sandbox_time_scale is not None:
            sandbox = Sandbox(lab.gateway, lab.dir, time_scale=sandbox_time_scale).start()
        env = LabEnv(
            lab=lab,
            redis=lab_redis,
            key_prefix=f"{key_prefix}{uuid.uuid4().hex[:6]}",
            secret_key=secrets.token_hex(16),
            source=snapshot_source(lab.dir / "source"),
            sandbox=sandbox,
        )
        env.write_inventory(**dict(inventory_vars or {}))
        yield env
    finally:
        if sandbox is not None:
            sandbox.stop()
        if lab_redis is not None:
            lab_redis.stop()
        if not keep:
            lab.down()
