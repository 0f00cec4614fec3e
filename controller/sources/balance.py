"""The account balance: fetched at most once per ``balance_cache_s``, with a burn rate from its history.

``getbalance`` is one more request on an account that is blocked for too many, and the balance moves
slowly, so the controller asks rarely. The key is a query parameter: it is never logged, and errors are
reported by type only (a requests exception's text contains the URL, key included).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from captcha_fleet.contract.api_client import CaptchaApi
from captcha_fleet.contract.api_errors import ApiError, is_error_answer

log = logging.getLogger(__name__)

BalanceFetch = Callable[[], float]


class BalanceError(RuntimeError):
    """The balance could not be read; the message never contains the key."""


def http_balance_fetch(base: str, key: str, timeout_s: float = 10.0) -> BalanceFetch:
    """A fetch function for ``{base}/res.php?action=getbalance`` through the one CaptchaAI client."""
    api = CaptchaApi(base, key, connect_timeout_s=timeout_s, read_timeout_s=timeout_s, pool_size=1)

    def fetch() -> float:
        try:
            return api.balance()
        except ApiError as exc:
            # An answer of the service (a refused key, a ban) versus no usable answer at all (transport, junk).
            verdict = "refused" if is_error_answer(exc.code) else "failed"
            raise BalanceError(f"getbalance {verdict}: {exc.code[:80]}") from None

    return fetch


@dataclass(frozen=True)
class BalanceReading:
    """The latest balance, how fast it falls, and when it was read."""

    balance: float | None = None
    burn_rate: float | None = None  # $/s, over the kept history
    read_at: float | None = None

    def age(self, now: float) -> float | None:
        """Seconds since the balance was read, or ``None`` if it never was."""
        return None if self.read_at is None else max(0.0, now - self.read_at)


@dataclass(eq=False)
class BalanceTracker:
    """Caches ``fetch()`` for ``cache_s`` and keeps ``history_s`` of readings for the burn rate."""

    fetch: BalanceFetch | None
    cache_s: float = 60.0
    history_s: float = 900.0
    clock: Callable[[], float] = time.time
    _history: deque[tuple[float, float]] = field(init=False, repr=False, default_factory=deque)
    _last_try: float | None = field(init=False, repr=False, default=None)

    def read(self) -> BalanceReading:
        """The cached reading, refreshed when older than ``cache_s`` (failures are retried as rarely)."""
        now = self.clock()
        if self.fetch is not None and (self._last_try is None or now - self._last_try >= self.cache_s):
            self._last_try = now
            try:
                value = self.fetch()
            except BalanceError as exc:
                log.warning("%s", exc)
            else:
                if self._history and value > self._history[-1][1]:
                    self._history.clear()  # a top-up: the burn rate starts over
                self._history.append((now, value))
                while len(self._history) > 2 and self._history[0][0] < now - self.history_s:
                    self._history.popleft()
        return self.reading()

    def reading(self) -> BalanceReading:
        """The latest reading without fetching."""
        if not self._history:
            return BalanceReading()
        (t0, v0), (t1, v1) = self._history[0], self._history[-1]
        burn = (v0 - v1) / (t1 - t0) if t1 > t0 else None
        return BalanceReading(balance=v1, burn_rate=burn, read_at=t1)
