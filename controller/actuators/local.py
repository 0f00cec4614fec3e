"""The local process actuator: worker services as ``captcha-fleet worker`` processes on this machine.

The seed's ProcessScaler done right: it starts and stops whole services (the controller decides which and
when), stops them with SIGTERM so they drain instead of dying mid-solve, reaps the dead so the controller
can replace them, and can adopt services a previous controller started (after a failover) by their pid.
Secrets reach the workers only through the environment, never the command line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..hosts.state import HostState, worker_id_for
from .base import ActuatorState

log = logging.getLogger(__name__)


@dataclass
class _Service:
    instance: str
    process: subprocess.Popen[bytes] | None  # None: adopted, known only by pid
    pid: int
    log_file: IO[bytes] | None = None
    stopping_since: float | None = None

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return _not_zombie(self.pid)

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)


def _not_zombie(pid: int) -> bool:
    """An adopted child of a dead controller may linger as a zombie until init reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def worker_command(
    config_path: str | None = None,
    key_prefix: str | None = None,
    log_level: str = "INFO",
    python: str = sys.executable,
) -> list[str]:
    """The argv of a worker service, without its identity (no secrets, no Redis URL: those go by env)."""
    argv = [python, "-m", "captcha_fleet.apps.cli", "worker", "--log-level", log_level]
    if config_path:
        argv += ["--config", config_path]
    if key_prefix:
        argv += ["--key-prefix", key_prefix]
    return argv


class LocalProcessActuator:
    """Runs exactly the desired instances of ``host`` as child processes (see the module docstring)."""

    def __init__(
        self,
        host: str,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        max_services: int = 20,
        log_dir: str | Path | None = None,
        stop_timeout_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.command = list(command)
        self.env = dict(os.environ if env is None else env)
        self.max_services = max_services
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.stop_timeout_s = stop_timeout_s
        self.clock = clock
        self.services: dict[str, _Service] = {}
        self.last_error: str | None = None

    # --- ServiceActuator ---------------------------------------------------------------------------
    def observe(self) -> ActuatorState:
        """Reap exited services, SIGKILL ones that ignored SIGTERM too long, report the rest."""
        now = self.clock()
        for instance, svc in list(self.services.items()):
            if not svc.alive():
                code = svc.process.returncode if svc.process is not None else None
                if svc.stopping_since is None:
                    log.warning("service %s exited unexpectedly (code %s)", self._wid(instance), code)
                else:
                    log.info("service %s stopped (code %s)", self._wid(instance), code)
                if svc.log_file is not None:
                    svc.log_file.close()
                del self.services[instance]
            elif svc.stopping_since is not None and now - svc.stopping_since > self.stop_timeout_s:
                log.warning("service %s ignored SIGTERM for %.0fs: SIGKILL", self._wid(instance), self.stop_timeout_s)
                svc.signal(signal.SIGKILL)
        running = frozenset(i for i, s in self.services.items() if s.stopping_since is None)
        stopping = frozenset(i for i, s in self.services.items() if s.stopping_since is not None)
        host = HostState(
            name=self.host,
            max_services=self.max_services,
            running=running,
            pending=stopping,
            last_error=self.last_error,
        )
        return ActuatorState(hosts={self.host: host}, busy=bool(stopping))

    def apply(self, desired: Mapping[str, frozenset[str]]) -> None:
        """Start the missing instances of this host, SIGTERM the unwanted ones; returns at once."""
        wanted = desired.get(self.host, frozenset())
        for instance in sorted(wanted):
            if instance not in self.services:
                if len(self.services) >= self.max_services:
                    self.last_error = f"at most {self.max_services} services on {self.host}"
                    log.warning("not starting %s: %s", self._wid(instance), self.last_error)
                    continue
                self._start(instance)
        for instance, svc in self.services.items():
            if instance not in wanted and svc.stopping_since is None:
                log.info("stopping service %s (SIGTERM: it drains)", self._wid(instance))
                svc.stopping_since = self.clock()
                svc.signal(signal.SIGTERM)

    def close(self) -> None:
        """Forget the children without touching them: services outlive the controller."""
        for svc in self.services.values():
            if svc.log_file is not None:
                svc.log_file.close()
                svc.log_file = None

    # --- extras --------------------------------------------------------------------------------------
    def adopt(self, instance: str, pid: int) -> bool:
        """Take over a service a previous controller started (its pid from the heartbeat)."""
        if instance in self.services:
            return False
        svc = _Service(instance=instance, process=None, pid=pid)
        if not svc.alive():
            return False
        self.services[instance] = svc
        log.info("adopted service %s (pid %d)", self._wid(instance), pid)
        return True

    def stop_all(self, timeout_s: float = 60.0) -> None:
        """SIGTERM every service and wait for them to drain (``--stop-workers-on-exit``, tests)."""
        self.apply({})
        deadline = time.monotonic() + timeout_s
        while self.services and time.monotonic() < deadline:
            self.observe()
            time.sleep(0.1)
        for svc in self.services.values():
            svc.signal(signal.SIGKILL)
        self.observe()

    def pids(self) -> dict[str, int]:
        """Instance -> pid of every service this actuator knows."""
        return {i: s.pid for i, s in self.services.items()}

    # --- internals -----------------------------------------------------------------------------------
    def _wid(self, instance: str) -> str:
        return worker_id_for(self.host, instance)

    def _start(self, instance: str) -> None:
        argv = [*self.command, "--host-name", self.host, "--instance", instance]
        log_file: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(self.log_dir / f"{self.host}-{instance}.log", "ab")  # noqa: SIM115
        try:
            process = subprocess.Popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file if log_file is not None else None,
                stderr=subprocess.STDOUT if log_file is not None else None,
                start_new_session=True,  # a Ctrl-C to the controller does not reach the services
            )
        except OSError as exc:
            self.last_error = f"cannot start a worker: {exc.strerror}"
            log.error("%s", self.last_error)
            if log_file is not None:
                log_file.close()
            return
        self.last_error = None
        self.services[instance] = _Service(instance, process, process.pid, log_file)
        log.info("started service %s (pid %d)", self._wid(instance), process.pid)
