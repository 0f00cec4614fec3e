"""Crash loops seen from the heartbeats: a service whose name keeps coming back under a new process.

A worker that dies and is restarted by its supervisor (systemd ``Restart=on-failure``, supervisord ``autorestart``)
writes heartbeats under the same name from a new process each time, so it never looks missing: counted as capacity
while it serves nothing. Each new ``process`` under a managed name is a restart; ``limit`` of them within
``window_s`` is a crash loop. A roll or a ``site.yml`` restart is one restart per service.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from captcha_fleet.contract.fleet_snapshot import LiveWorker

CRASH_LOOP_RESTARTS = 3


class RestartWatch:
    """Restarts per managed service within a sliding window (bounded: the services it is asked about)."""

    def __init__(self, window_s: float, limit: int = CRASH_LOOP_RESTARTS) -> None:
        self.window_s = window_s
        self.limit = limit
        self._process: dict[str, str] = {}
        self._restarts: dict[str, deque[float]] = {}

    def observe(self, workers: Mapping[str, LiveWorker], managed: Iterable[str], now: float) -> None:
        """Note a new process under each managed name; forget the names no longer managed."""
        managed = set(managed)
        for wid in [w for w in self._process if w not in managed]:
            self.forget(wid)
        for wid in managed:
            worker = workers.get(wid)
            process = worker.beat.process if worker is not None else ""
            if not process:
                continue
            previous = self._process.get(wid)
            self._process[wid] = process
            if previous is not None and previous != process:
                self._restarts.setdefault(wid, deque(maxlen=self.limit)).append(now)

    def restarts(self, wid: str, now: float) -> int:
        """Restarts of ``wid`` within the window ending ``now``."""
        return sum(1 for at in self._restarts.get(wid, ()) if now - at <= self.window_s)

    def looping(self, wid: str, now: float) -> bool:
        return self.restarts(wid, now) >= self.limit

    def forget(self, wid: str) -> None:
        self._process.pop(wid, None)
        self._restarts.pop(wid, None)
