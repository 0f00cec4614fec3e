"""Fault injection decisions: which request misbehaves, and how.

The real service sometimes answers with an nginx error page, a 200 with HTML, a stalled response, a reset
connection, ``ERROR: 100x`` or ERROR_NO_SLOT_AVAILABLE. Clients must survive all of them, so the sandbox
rolls one seeded die per API request and the HTTP layer acts the chosen fault out. Deciding is kept apart
from acting so the odds are testable without sockets.
"""

from __future__ import annotations

import random
import threading

from captcha_fleet.apps.sandbox.config import FAULT_KINDS, SandboxConfig

# Bodies modelled on what a reverse proxy in front of the real service sends.
NGINX_ERROR_PAGES: dict[int, str] = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}
MAINTENANCE_PAGE = (
    "<!DOCTYPE html>\r\n<html><head><title>Maintenance</title></head>\r\n"
    "<body><h1>We'll be back soon</h1><p>The service is under maintenance.</p></body></html>\r\n"
)
# CaptchaAI's numbered capacity errors; 1005 is reserved for over-polling, which the model answers itself.
CAPACITY_ERRORS: tuple[str, ...] = ("ERROR: 1001", "ERROR: 1002", "ERROR: 1003", "ERROR: 1004")


def nginx_error_page(status: int, reason: str | None = None) -> str:
    """The HTML nginx sends for an error status."""
    reason = reason or NGINX_ERROR_PAGES.get(status, "Internal Server Error")
    return (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )


class FaultInjector:
    """Rolls for a fault per request; thread-safe and reproducible for a given seed."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def reseed(self, seed: int | None) -> None:
        """Restart the sequence (after a config change of ``seed`` or a reset)."""
        with self._lock:
            self._rng.seed(seed)

    def decide(self, config: SandboxConfig, endpoint: str) -> str | None:
        """The fault kind to act out for one request to ``endpoint``, or None to answer normally.

        One uniform draw against the cumulative probabilities, so the configured rates are the observed
        rates (they are validated to add up to at most 1).
        """
        if endpoint not in config.fault_endpoints or not config.faults:
            return None
        with self._lock:
            draw = self._rng.random()
        threshold = 0.0
        for kind in FAULT_KINDS:
            threshold += config.fault_rate(kind)
            if draw < threshold:
                return kind
        return None

    def http_status(self) -> int:
        """Which 5xx an ``http_500`` fault answers with."""
        with self._lock:
            return self._rng.choice(sorted(NGINX_ERROR_PAGES))

    def capacity_error(self) -> str:
        """Which ``ERROR: 100x`` an ``error_1001`` fault answers with."""
        with self._lock:
            return self._rng.choice(CAPACITY_ERRORS)
