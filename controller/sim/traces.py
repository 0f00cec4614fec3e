"""Load traces: arrivals per second, from a CSV file (``t,arrivals``) or a built-in generator.

Built-in traces draw Poisson arrivals from a rate curve with their own seeded generator, so a trace is the
same for every policy and every run with the same seed.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class TraceError(ValueError):
    """A trace file or name is invalid; the message says where and why."""


@dataclass(frozen=True)
class Trace:
    """Tasks arriving in each second from the start: ``arrivals[t]`` during ``[t, t + 1)``."""

    name: str
    arrivals: tuple[int, ...]

    @property
    def duration_s(self) -> int:
        """Seconds covered."""
        return len(self.arrivals)

    @property
    def total(self) -> int:
        """Tasks in the whole trace."""
        return sum(self.arrivals)


def _steady(t: float) -> float:
    return 1.5


def _diurnal(t: float) -> float:
    # One "day" compressed into two hours: 0.3/s at night, 3/s at the peak.
    return 0.3 + 2.7 * (1 - math.cos(2 * math.pi * t / 7200)) / 2


def _spike(t: float) -> float:
    return 4.0 if 1200 <= t < 1500 else 1.0


def _sawtooth(t: float) -> float:
    # Ten-minute ramps from 0.3/s to 3/s, then a sudden drop.
    return 0.3 + 2.7 * ((t % 600) / 600)


def _flash_crowd(t: float) -> float:
    # A link goes viral at t = 900: the rate jumps ninefold, then decays over ~5 minutes.
    return 0.5 + (4.0 * math.exp(-(t - 900) / 300) if t >= 900 else 0.0)


def _short(t: float) -> float:
    # Ten minutes for `make demo`: a quiet start, a three-minute burst at eight times the rate, quiet again.
    return 4.0 if 120 <= t < 300 else 0.5


def _periodic(t: float) -> float:
    # 120 tasks at once every 90 s: bursts slightly rarer than a short scale-down window (issue 11).
    return 120.0 if t % 90 < 1 else 0.0


def _plan_bound(t: float) -> float:
    # Five minutes at 8/s (~126 slots of load, more than a 100-thread plan serves): the plan binds.
    return 8.0 if 60 <= t < 360 else 1.0


BUILTIN: dict[str, tuple[Callable[[float], float], int, str]] = {
    "steady": (_steady, 3600, "1.5 tasks/s for an hour"),
    "diurnal": (_diurnal, 7200, "a day in two hours: 0.3/s to 3/s and back (cosine)"),
    "spike": (_spike, 3600, "1/s with a five-minute spike to 4/s at t=1200"),
    "sawtooth": (_sawtooth, 3600, "ramps from 0.3/s to 3/s over ten minutes, then drops; six times"),
    "flash-crowd": (_flash_crowd, 3600, "0.5/s, then a jump to 4.5/s at t=900 decaying over ~5 minutes"),
    "short": (_short, 600, "ten minutes: 0.5/s, three minutes at 4/s from t=120, then 0.5/s (make demo)"),
    "periodic": (_periodic, 3600, "120 tasks at once every 90 s for an hour"),
    "plan-bound": (_plan_bound, 600, "1/s, five minutes at 8/s from t=60 (above a 100-thread plan), 1/s"),
}


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method; rates here are a few tasks per second."""
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def builtin(name: str, seed: int = 1) -> Trace:
    """A built-in trace by name, Poisson arrivals seeded by ``seed``."""
    if name not in BUILTIN:
        raise TraceError(f"unknown built-in trace {name!r} (known: {', '.join(BUILTIN)})")
    rate, duration, _ = BUILTIN[name]
    rng = random.Random(f"trace:{name}:{seed}")
    return Trace(name, tuple(_poisson(rng, rate(t + 0.5)) for t in range(duration)))


def load_csv(path: str | Path) -> Trace:
    """A ``t,arrivals`` CSV: integer seconds (increasing, gaps mean no arrivals), non-negative counts."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror}") from exc
    rows = list(csv.reader(text.splitlines()))
    if not rows or [c.strip().lower() for c in rows[0]] != ["t", "arrivals"]:
        got = ",".join(rows[0]) if rows else "an empty file"
        raise TraceError(f"{path}:1: expected the header 't,arrivals', got {got!r}")
    counts: dict[int, int] = {}
    last = -1
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise TraceError(f"{path}:{lineno}: expected 2 columns (t,arrivals), got {len(row)}")
        t_txt, n_txt = (c.strip() for c in row)
        try:
            t_val = float(t_txt)
        except ValueError:
            raise TraceError(f"{path}:{lineno}: t must be a number of seconds, got {t_txt!r}") from None
        if t_val < 0 or t_val != int(t_val):
            raise TraceError(f"{path}:{lineno}: t must be a whole second >= 0, got {t_txt!r}")
        t = int(t_val)
        if t <= last:
            raise TraceError(f"{path}:{lineno}: t must increase (got {t} after {last})")
        if not n_txt.isdigit():
            raise TraceError(f"{path}:{lineno}: arrivals must be a whole number >= 0, got {n_txt!r}")
        counts[t] = int(n_txt)
        last = t
    if not counts:
        raise TraceError(f"{path}: no data rows after the header")
    return Trace(path.stem, tuple(counts.get(t, 0) for t in range(last + 1)))


def resolve(spec: str, seed: int = 1) -> Trace:
    """``builtin:NAME``, a bare built-in name (when no such file exists), or a CSV path."""
    if spec.startswith("builtin:"):
        return builtin(spec.partition(":")[2], seed)
    if spec in BUILTIN and not Path(spec).exists():
        return builtin(spec, seed)
    return load_csv(spec)
