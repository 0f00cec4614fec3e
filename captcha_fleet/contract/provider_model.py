"""What a CaptchaAI-like provider does to its clients, as numbers: one model the sandbox acts out and the
simulator replays, so a figure measured live and a figure simulated come from the same provider.

The knobs real providers turn: a solve-time distribution per method (a lognormal, or a mixture of them when
one method hides several kinds of CAPTCHA), the HTTP round trip and its jitter (loopback is not a data
centre), solve times that grow while the provider is busy, and polls that are occasionally slow or fail.
Every time here is in trace seconds; the sandbox multiplies by its ``time_scale``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from captcha_fleet.contract.methods import DEFAULT_SOLVE_MEDIAN_S, DEFAULT_SOLVE_SIGMA, solve_profiles


@dataclass(frozen=True)
class SolveTime:
    """A lognormal solve time: half the solves finish before ``median_s``."""

    median_s: float
    sigma: float = 0.3

    def draw(self, rng: random.Random) -> float:
        """One solve time (no draw at all for a zero median, which solves at once)."""
        if self.median_s <= 0:
            return 0.0
        return rng.lognormvariate(math.log(self.median_s), self.sigma)

    def cdf(self, x: float) -> float:
        """The share of solves done within ``x`` seconds."""
        if self.median_s <= 0 or self.sigma == 0:
            return 1.0 if x >= self.median_s else 0.0
        if x <= 0:
            return 0.0
        return 0.5 * math.erfc(-(math.log(x) - math.log(self.median_s)) / (self.sigma * math.sqrt(2)))

    def quantile(self, q: float) -> float:
        """The solve time below which a share ``q`` of the solves fall."""
        return _quantile(self.cdf, q, self.median_s * math.exp(6 * self.sigma) + 1.0)

    def to_dict(self) -> dict[str, float]:
        """The shape the sandbox's config parser reads back."""
        return {"median_s": self.median_s, "sigma": self.sigma}


@dataclass(frozen=True)
class SolveMixture:
    """Several kinds of CAPTCHA behind one method (an easy and a hard reCAPTCHA): ``(weight, SolveTime)`` parts."""

    parts: tuple[tuple[float, SolveTime], ...]

    def __post_init__(self) -> None:
        if not self.parts or any(w <= 0 or not math.isfinite(w) for w, _ in self.parts):
            raise ValueError(f"a mixture needs parts with positive weights, got {self.parts!r}")

    def draw(self, rng: random.Random) -> float:
        """Pick a part by weight, then draw from it (two draws, always, so the stream stays aligned)."""
        pick = rng.random() * sum(w for w, _ in self.parts)
        for weight, part in self.parts:
            pick -= weight
            if pick < 0:
                return part.draw(rng)
        return self.parts[-1][1].draw(rng)

    def cdf(self, x: float) -> float:
        """The share of solves done within ``x`` seconds."""
        total = sum(w for w, _ in self.parts)
        return sum(w * part.cdf(x) for w, part in self.parts) / total

    def quantile(self, q: float) -> float:
        """The solve time below which a share ``q`` of the solves fall."""
        return _quantile(self.cdf, q, max(part.quantile(0.9999) for _, part in self.parts) + 1.0)

    def to_dict(self) -> dict[str, list[dict[str, float]]]:
        """The shape the sandbox's config parser reads back."""
        return {"mixture": [{"weight": w, **part.to_dict()} for w, part in self.parts]}


SolveDistribution = SolveTime | SolveMixture
DEFAULT_SOLVE_TIME = SolveTime(DEFAULT_SOLVE_MEDIAN_S, DEFAULT_SOLVE_SIGMA)


def table_solve_times(sigma: float | None = None) -> dict[str, SolveDistribution]:
    """The method table's solve times as lognormals (``sigma`` for all of them, if given): ``default`` and each
    method whose solve time differs from it, e.g. 5 s images beside 15 s tokens."""
    return {method: SolveTime(median, spread) for method, (median, spread) in solve_profiles(sigma).items()}


def _quantile(cdf: Callable[[float], float], q: float, high: float) -> float:
    """Bisection on a monotone CDF (60 halvings: far below any tolerance a solve time needs)."""
    if not 0 < q < 1:
        raise ValueError(f"a quantile needs 0 < q < 1, got {q}")
    lo, hi = 0.0, high
    while cdf(hi) < q:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if cdf(mid) < q:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class ProviderModel:
    """The provider's behaviour (trace seconds); the zero values are the sandbox's loopback provider."""

    solve_time: Mapping[str, SolveDistribution] = field(default_factory=table_solve_times)
    http_latency_s: float = 0.0  # the shortest HTTP round trip to the provider
    http_jitter_s: float = 0.0  # ... plus a uniform draw in [0, jitter]
    load_slowdown: float = 0.0  # k: a solve takes (1 + k * min(1, busy / threads)) times its drawn time
    load_threads: int | None = None  # what "busy" is measured against; None: the plan's threads
    slow_poll_rate: float = 0.0  # the share of polls (res.php) that stall ...
    slow_poll_s: float = 0.0  # ... for this long before they answer
    failed_poll_rate: float = 0.0  # the share of polls answered with an HTTP 5xx page

    def solve_time_for(self, method: str) -> SolveDistribution:
        """The distribution for ``method``, falling back to ``default``."""
        return self.solve_time.get(method) or self.solve_time.get("default") or DEFAULT_SOLVE_TIME

    def load_factor(self, busy: int, plan_threads: int | None) -> float:
        """How much longer a solve accepted now takes, with ``busy`` solves already in flight.

        Saturates at a full plan: a provider refuses beyond its threads, so only a model without that cap (the
        simulator's uncapped oracle) sees more in flight, and must not pay for load no provider would take.
        """
        threads = self.load_threads or plan_threads
        if not self.load_slowdown or not threads:
            return 1.0
        return 1.0 + self.load_slowdown * min(1.0, busy / threads)

    def round_trip_s(self, rng: random.Random) -> float:
        """One HTTP round trip (no draw when there is no jitter, so a zero model costs no randomness)."""
        if not self.http_jitter_s:
            return self.http_latency_s
        return self.http_latency_s + rng.uniform(0.0, self.http_jitter_s)

    def poll_penalty_s(self, rng: random.Random, interval_s: float) -> float:
        """What the poll that would see an answer adds: a 5xx costs the next poll, a stall its length.

        One draw per poll against the cumulative rates (5xx first, then stall), as the sandbox's faults roll.
        """
        if not self.failed_poll_rate and not self.slow_poll_rate:
            return 0.0
        extra = 0.0
        for _ in range(100):  # bounded: a 100 % failure rate must not spin forever
            draw = rng.random()
            if draw < self.failed_poll_rate:
                extra += interval_s
                continue
            if draw < self.failed_poll_rate + self.slow_poll_rate:
                extra += self.slow_poll_s
            break
        return extra
