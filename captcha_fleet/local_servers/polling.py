"""Wait for a throwaway server, rig or fleet to reach a state: the one bounded poll of the local servers, the tests
and the benches (a fleet's own code waits by blocking reads, never like this)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; bounded, so a test or bench never hangs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
