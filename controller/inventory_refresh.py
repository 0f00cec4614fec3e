"""Re-read the inventory every interval, and at once on request (SIGHUP), without ever blocking the control loop.

A read costs a second or two (``ansible-inventory`` runs, a dynamic inventory may call a cloud API), so it runs in
its own thread and hands each inventory it read to ``follow`` (the ansible actuator's ``follow_inventory``). A read
that fails changes nothing: the error (the source and what Ansible said) is logged and the last good host set
stays, since a cloud API that is down for a minute must not drain the fleet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from captcha_fleet.contract.inventory import Inventory, InventoryError
from captcha_fleet.contract.start_stop import DaemonLoop

log = logging.getLogger(__name__)


class InventoryRefresher(DaemonLoop):
    """Calls ``follow(read())`` every ``interval_s`` seconds and whenever :meth:`request` is called."""

    def __init__(self, read: Callable[[], Inventory], follow: Callable[[Inventory], Any], interval_s: float) -> None:
        self.read = read
        self.follow = follow
        self.interval_s = interval_s
        self.reads = 0  # successful reads (for status and tests)
        self.last_error: str | None = None
        self._wake = threading.Event()
        super().__init__("inventory-refresh")  # the first read is after one interval (the actuator read at start)

    def request(self) -> None:
        """Read again now (the SIGHUP handler calls this; safe from a signal handler: it only sets an event)."""
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def refresh(self) -> bool:
        """One read; True when it succeeded and was handed on."""
        try:
            inventory = self.read()
        except InventoryError as exc:
            self.last_error = str(exc)
            log.error("inventory re-read failed, keeping the hosts as they were: %s", exc)
            return False
        self.follow(inventory)
        self.reads += 1
        self.last_error = None
        return True

    def run(self) -> None:
        while not self.stopping.is_set():
            requested = self._wake.wait(self.interval_s)
            if self.stopping.is_set():
                return
            self._wake.clear()
            if requested:
                log.info("re-reading the inventory (asked for)")
            try:
                self.refresh()
            except Exception:  # a bug in follow() must not end the re-reads
                log.exception("inventory re-read failed")
