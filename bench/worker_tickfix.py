"""An experiment, not product code: the fleet worker with a proposed poll-tick fix patched in at run time.

The batch poller ticks at most once per ``poll_interval_s`` and polls the solves whose ``next_poll`` has
come. But ``next_poll`` is set *after* the poll's HTTP round trip (``now + interval``, solver.py
``_schedule_next_polls``) or after the submit (``now + first_poll_delay``, solver.py ``_submit``), while
the next tick is due ``interval`` after the tick *started* (solver.py ``_poll_loop``). So a solve is a
few milliseconds short of due at the next tick and waits one more interval: it is polled every second
tick, and seen one interval (not half an interval) after the provider finished, on average.

The proposed fix treats a solve as pollable when its ``next_poll`` is within half an interval of now
(round to the nearest tick instead of up). Ticks stay at least ``poll_interval_s`` apart, so no CAPTCHA
is polled more often than the interval. This module emulates exactly that by moving every ``next_poll``
half an interval earlier, then runs the ordinary worker CLI:
``python bench/worker_tickfix.py worker --config fleet.yml ...`` (same arguments as ``captcha-fleet``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# Run as a script, sys.path[0] is bench/; put the repository first so ``worker`` is the regular package
# (the editable install may list it as a namespace package, which cannot read its Lua files).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import worker.solver
from captcha_fleet.cli import main
from worker.solver import Solve, SolveEngine

_original_schedule = SolveEngine._schedule_next_polls
_original_submit = SolveEngine._submit


def _schedule_rounded(self: SolveEngine, solves: list[Solve], *args: Any) -> None:
    _original_schedule(self, solves, *args)
    half = self.api_config.poll_interval_s / 2
    with self._lock:
        for solve in solves:
            solve.next_poll -= half


def _submit_rounded(self: SolveEngine, solve: Solve) -> None:
    _original_submit(self, solve)
    if solve.captcha_id is not None:
        with self._wake:
            solve.next_poll -= self.api_config.poll_interval_s / 2
            self._wake.notify_all()


def install() -> None:
    """Patch the solve engine in this process (not when the worker already rounds to the nearest tick)."""
    if hasattr(worker.solver, "POLL_ROUNDING"):
        print("worker_tickfix: the worker already has the fix; running it unpatched", file=sys.stderr)
        return
    patched: dict[str, Any] = {"_schedule_next_polls": _schedule_rounded, "_submit": _submit_rounded}
    for name, function in patched.items():
        setattr(SolveEngine, name, function)


if __name__ == "__main__":
    install()
    sys.exit(main(sys.argv[1:]))
