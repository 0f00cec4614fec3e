"""What a replay measures, in trace seconds, under the same names ``captcha-fleet sim --json`` prints.

Samples (every ``sample_s`` of real time): the queue, every live worker's heartbeat (slots held =
max(target, busy), as the simulator counts them) and, when the API is the sandbox, its solves in flight at
the provider. At the end: the results hash (latency), the decision log (scale changes, service starts,
flaps) and the sandbox's counters (HTTP requests per task, refusals). Real seconds are divided by the time
scale, so every figure compares with the simulator's directly.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from captcha_fleet.contract.fleet_snapshot import read_snapshot
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import Result
from captcha_fleet.contract.windows import percentile

FLAP_WINDOW_S = 120.0


@dataclass
class Sample:
    """One look at the fleet (``t`` in trace seconds since the replay started)."""

    t: float
    pending: int
    slots_held: int  # sum over live workers of max(target, busy)
    services: int
    provider_in_flight: int | None


@dataclass
class Sampler:
    """Integrates slot-seconds and the provider's in-flight count between samples."""

    client: redis.Redis
    keys: Keys
    time_scale: float
    provider_stats: Callable[[], Mapping[str, Any]] | None = None
    samples: list[Sample] = field(default_factory=list)

    def sample(self, real_elapsed_s: float) -> Sample:
        """Read the queue, the heartbeats and the provider once."""
        fleet = read_snapshot(self.client, self.keys)
        held, services = 0, 0
        for worker in fleet.workers.values():
            if worker.state == "stopped":
                continue
            services += 1
            held += max(worker.beat.target, worker.busy)
        provider = None
        if self.provider_stats is not None:
            provider = int(self.provider_stats()["in_flight"])
        s = Sample(real_elapsed_s / self.time_scale, fleet.pending, held, services, provider)
        self.samples.append(s)
        return s


def count_flaps(decisions: Sequence[Mapping[str, Any]], window_s: float) -> int:
    """Scale-downs reversed by a scale-up within ``window_s`` (decision times in any unit window_s uses)."""
    flaps, last_down = 0, None
    for d in decisions:
        before, after, at = int(d["previous_slots"]), int(d["desired_slots"]), float(d["at"])
        if after < before:
            last_down = at
        elif after > before and last_down is not None:
            flaps += at - last_down <= window_s
            last_down = None
    return flaps


def integrate(samples: Sequence[Sample], plan_threads: int | None = None) -> dict[str, Any]:
    """Slot- and service-seconds, and the provider's figures while tasks wait (left Riemann sums).

    ``provider_mean_while_plan_bound`` counts only the time tasks wait *and* the fleet holds at least the
    plan's threads in slots: the worker's share of "use the threads the plan pays for", apart from the
    controller's choice to keep a short standing queue on a smaller fleet.
    """
    slot_s = service_s = wait_s = provider_wait = bound_s = provider_bound = 0.0
    series: list[list[float]] = []
    for a, b in itertools.pairwise(samples):
        dt = b.t - a.t
        slot_s += dt * a.slots_held
        service_s += dt * a.services
        if a.provider_in_flight is not None and a.pending > 0:
            wait_s += dt
            provider_wait += dt * a.provider_in_flight
            if plan_threads is not None and a.slots_held >= plan_threads:
                bound_s += dt
                provider_bound += dt * a.provider_in_flight
    step = max(1, len(samples) // 200)
    for s in samples[::step]:
        if s.provider_in_flight is not None:
            series.append([round(s.t, 1), s.provider_in_flight])
    peaks = [s.provider_in_flight for s in samples if s.provider_in_flight is not None]
    return {
        "worker_seconds": slot_s,
        "service_seconds": service_s,
        "max_backlog": max((s.pending for s in samples), default=0),
        "max_slots": max((s.slots_held for s in samples), default=0),
        "provider_peak": max(peaks) if peaks else None,
        "provider_mean_while_waiting": provider_wait / wait_s if wait_s > 0 else None,
        "provider_waiting_s": wait_s,
        "provider_mean_while_plan_bound": provider_bound / bound_s if bound_s > 0 else None,
        "provider_plan_bound_s": bound_s,
        "provider_in_flight_series": series,
    }


def slo_violation_s(finished: Sequence[tuple[float, float]], target_s: float, window_s: float = 60.0) -> float:
    """Seconds (trace) during which the P95 of tasks finished in the last ``window_s`` exceeded the target."""
    if not finished:
        return 0.0
    ordered = sorted(finished)
    times = [t for t, _ in ordered]
    over = 0.0
    for second in range(int(times[-1]) + 1):
        lo, hi = bisect.bisect_right(times, second - window_s), bisect.bisect_right(times, second)
        recent = [lat for _, lat in ordered[lo:hi]]
        if recent and percentile(recent, 0.95) > target_s:
            over += 1.0
    return over


def latency_figures(results: Sequence[Result], time_scale: float, start_wall: float) -> dict[str, Any]:
    """P50/P95/P99/max latency and the per-task slot hold times, in trace seconds."""
    lat = [(r.latency_seconds or 0.0) / time_scale for r in results]
    held = [
        (r.finished_at - r.claimed_at) / time_scale
        for r in results
        if r.finished_at is not None and r.claimed_at is not None
    ]
    ordered = lat or [0.0]
    return {
        "p50_latency_s": percentile(ordered, 0.5),
        "p95_latency_s": percentile(ordered, 0.95),
        "p99_latency_s": percentile(ordered, 0.99),
        "max_latency_s": max(ordered),
        "oracle_worker_seconds": sum(held),  # slot hold times: what a slot per task, at once, would cost
        "finished": [
            (((r.finished_at if r.finished_at is not None else start_wall) - start_wall) / time_scale, x)
            for r, x in zip(results, lat, strict=True)
        ],
    }
