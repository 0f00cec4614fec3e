"""Solve times per CAPTCHA method, and the fleet-wide figures the queue model needs built from them.

One window of the latest finished tasks blurs a mixed stream: while a burst ramps up, the fast method (images,
~5 s) finishes many times while the slow one (tokens, 15-60 s) has barely started, so the window's mean and P95
describe the images and the fleet is sized for them (issue 24: P95 solve read 31 s where the mix holds 56 s,
short/mixed-methods 72.5 s against a 61.3 s goal). Here each method keeps its own sample of solve times (the
slot hold per task, detection delay included: what the worker reports), so a slow method's distribution is not
diluted by how often the fast one finishes, and the mix is each method's share of completions. The fleet's mean
is the mix-weighted mean; its P95 the mixture's quantile.

Bounded memory whatever the events say (untrusted input): at most ``max_methods`` distinct methods, the rest
grouped under :data:`OTHER`; at most ``samples`` solves per method, none older than ``max_age_s``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from captcha_fleet.contract.windows import CounterWindow

from ..settings import ControllerSettings
from ..signals import MethodSolve

OTHER = "other"  # methods beyond max_methods (and an event without one)
MAX_METHOD_CHARS = 40  # a method name longer than this is no method a provider knows
MAX_METHODS = 8
SAMPLES_PER_METHOD = 256
# A method's solves are remembered this many latency windows at most: a provider's distribution changes over
# minutes, and a slow method must not be forgotten because a burst's fast completions crowded it out.
MEMORY_WINDOWS = 5.0


@dataclass
class _Method:
    solves: deque[tuple[float, float]]  # (finished at, solve seconds), oldest first
    total: int  # completions so far
    rate: CounterWindow  # completions per second, for the mix


class MethodSolveTimes:
    """Per-method solve-time samples and completion rates; ``observe(now)`` once per read, then the figures."""

    def __init__(
        self,
        mix_window_s: float,
        max_age_s: float,
        samples: int = SAMPLES_PER_METHOD,
        max_methods: int = MAX_METHODS,
    ) -> None:
        self.mix_window_s = mix_window_s
        self.max_age_s = max_age_s
        self.samples = max(1, samples)
        self.max_methods = max(1, max_methods)
        self._methods: dict[str, _Method] = {}

    def key(self, method: str) -> str:
        """The window a method's solves go to: its own while there is room, else :data:`OTHER`."""
        if method in self._methods:
            return method
        if not method or len(method) > MAX_METHOD_CHARS:
            return OTHER
        named = sum(1 for m in self._methods if m != OTHER)
        return method if named < self.max_methods else OTHER

    def add(self, t: float, method: str, solve_s: float) -> None:
        """Record one finished task of ``method`` that held its slot ``solve_s`` seconds."""
        key = self.key(method)
        entry = self._methods.get(key)
        if entry is None:
            entry = self._methods[key] = _Method(deque(maxlen=self.samples), 0, CounterWindow(self.mix_window_s))
        entry.solves.append((t, solve_s))
        entry.total += 1

    def observe(self, now: float) -> None:
        """Sample each method's completion counter and forget solves older than ``max_age_s``."""
        for entry in self._methods.values():
            entry.rate.add(now, entry.total)
            while entry.solves and entry.solves[0][0] < now - self.max_age_s:
                entry.solves.popleft()

    def methods(self) -> tuple[str, ...]:
        """The method windows kept (at most ``max_methods`` plus :data:`OTHER`)."""
        return tuple(self._methods)

    def mix(self) -> dict[str, float]:
        """Each method's share of completions over the mix window (by sample count before two reads)."""
        weights: dict[str, float] = {}
        for name, entry in self._methods.items():
            if not entry.solves:
                continue
            rate = entry.rate.rate()
            weights[name] = rate if rate is not None else float(len(entry.solves))
        total = sum(weights.values())
        if total <= 0:  # nothing finished within the mix window: what each method's sample holds
            weights = {n: float(len(e.solves)) for n, e in self._methods.items() if e.solves}
            total = sum(weights.values())
        return {n: w / total for n, w in weights.items()} if total > 0 else {}

    def by_method(self) -> dict[str, MethodSolve]:
        """Share, mean and P95 of each method with solves in its window."""
        out = {}
        for name, share in self.mix().items():
            solves = sorted(s for _, s in self._methods[name].solves)
            out[name] = MethodSolve(
                share=share,
                mean_s=sum(solves) / len(solves),
                p95_s=solves[max(1, -(-95 * len(solves) // 100)) - 1],
                samples=len(solves),
            )
        return out

    def mean(self) -> float | None:
        """The mix-weighted mean solve (slot occupancy per task, for Little's law)."""
        return mixed_mean(self.by_method())

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile of the mixture: each method's solves weighted by its share over its sample size."""
        weighted: list[tuple[float, float]] = []
        for name, share in self.mix().items():
            solves = self._methods[name].solves
            weighted.extend((s, share / len(solves)) for _, s in solves)
        if not weighted:
            return None
        weighted.sort()
        acc = 0.0
        for value, weight in weighted:
            acc += weight
            if acc >= q - 1e-12:
                return value
        return weighted[-1][0]


def for_settings(settings: ControllerSettings) -> MethodSolveTimes:
    """The estimator the controller and the simulator both run: the mix over the latency window."""
    window = settings.latency_window_s
    return MethodSolveTimes(mix_window_s=MEMORY_WINDOWS * window, max_age_s=MEMORY_WINDOWS * window)


def mixed_mean(by_method: Mapping[str, MethodSolve]) -> float | None:
    """The share-weighted mean of per-method mean solves (None with no method)."""
    total = sum(m.share for m in by_method.values())
    if total <= 0:
        return None
    return sum(m.share * m.mean_s for m in by_method.values()) / total
