"""The controller's one validating reader: heartbeats, events and counters are untrusted input.

Any worker host holds the credentials to write heartbeats, events and the completion counter, so one buggy or
compromised host could otherwise stop the controller (a NaN that raises) or steer the fleet (``busy: 10**15``,
a counter that runs backwards, a latency stamped in the future). Records that do not decode at all are
refused by :mod:`captcha_fleet.contract.records` (wrong types, non-finite numbers); this module judges what decodes:
is the value plausible for what the controller itself knows (the target it wrote, the plan's ceiling, the
time since it last looked)? A value that is not is skipped and counted by ``(source, reason)`` for the
metric, logged once per pair, and never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from captcha_fleet.contract.records import Event, Heartbeat

from ..signals import ERROR_CLASSES

log = logging.getLogger(__name__)

# Sources, as the metric's ``source`` label.
HEARTBEAT = "heartbeat"
EVENT = "event"
COUNTER = "counter"

MAX_CLOCK_SKEW_S = 30.0  # a wall-clock time this far ahead of ours was not written by a sane host
MAX_LATENCY_S = 86_400.0  # end to end; a task that waited a day says nothing about today's capacity
# How fast a counter may grow: an API answer per slot every 20 ms is beyond what the back-off and the poll
# pace allow; results per second across the fleet likewise (malformed tasks finish without a slot). The slack
# absorbs a burst between two reads taken close together.
MAX_ANSWERS_PER_SLOT_S = 50.0
MAX_RESULTS_PER_S = 5_000.0
COUNTER_SLACK = 1_000


@dataclass
class Rejections:
    """Counts of skipped values by ``(source, reason)``; each pair is logged once per process."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    _logged: set[tuple[str, str]] = field(default_factory=set)

    def reject(self, source: str, reason: str, subject: str, detail: object = "") -> None:
        """Skip one value: count it, log the first of its kind (later ones only count)."""
        key = (source, reason)
        self.counts[key] = self.counts.get(key, 0) + 1
        if key not in self._logged:
            self._logged.add(key)
            log.warning("untrusted %s skipped (%s) from %s: %s; further ones are only counted", source, reason,
                        subject, detail)  # fmt: skip

    def take(self) -> dict[tuple[str, str], int]:
        """The counts since the last call (for one read's metric increments)."""
        out, self.counts = self.counts, {}
        return out


def heartbeat_problem(beat: Heartbeat, slot_bound: int, now: float) -> str | None:
    """Why a decoded heartbeat is implausible (None when it is plausible).

    ``slot_bound`` is the most slots the controller could have given this worker: the larger of the target it
    wrote for it and the plan's ceiling (a worker lowers its slots only at its next heartbeat).
    """
    counters = [beat.completed, beat.succeeded, beat.duplicates, *beat.failed.values(), *beat.api_errors.values()]
    if min(beat.slots, beat.busy, beat.target, *counters) < 0:
        return "negative"
    # busy may exceed slots: a worker that cuts its limit under capacity errors keeps the solves it holds (game
    # day: every such heartbeat was skipped, the service counted as starting, and the controller churned services
    # each second of an API fault burst). Above the bound it is no worker's.
    if beat.slots > slot_bound:
        return "slots-above-bound"
    if beat.busy > slot_bound:
        return "busy-above-bound"
    if beat.ts is not None and beat.ts > now + MAX_CLOCK_SKEW_S:
        return "ts-in-future"
    return None


def answers(beat: Heartbeat) -> dict[str, int]:
    """The heartbeat's cumulative API answers: errors by class and results ("ok")."""
    out = {cls: beat.api_errors.get(cls, 0) for cls in ERROR_CLASSES}
    out["ok"] = beat.completed
    return out


@dataclass
class _Seen:
    process: str
    ts: float
    totals: dict[str, int]


class AnswerCounters:
    """Per-process cumulative answer counters, turned into plausible increments.

    A counter only grows within one process (a restart, a new ``process``, starts a new baseline that counts
    nothing), and no faster than a process with that many slots could answer: a forged or buggy count is
    skipped instead of making a host look broken.
    """

    def __init__(self, rejections: Rejections) -> None:
        self.rejections = rejections
        self._seen: dict[str, _Seen] = {}

    def increments(self, worker_id: str, beat: Heartbeat, now: float) -> dict[str, int]:
        """What this worker answered since the last read (all zero on first sight or when implausible)."""
        totals = answers(beat)
        last = self._seen.get(worker_id)
        self._seen[worker_id] = _Seen(beat.process, now, totals)
        if last is None or last.process != beat.process:
            return dict.fromkeys(totals, 0)
        deltas = {k: v - last.totals.get(k, 0) for k, v in totals.items()}
        if min(deltas.values()) < 0:
            self.rejections.reject(HEARTBEAT, "counter-decreased", worker_id, deltas)
            return dict.fromkeys(totals, 0)
        elapsed = max(0.0, now - last.ts)
        if sum(deltas.values()) > max(1, beat.slots) * elapsed * MAX_ANSWERS_PER_SLOT_S + COUNTER_SLACK:
            self.rejections.reject(HEARTBEAT, "counter-too-fast", worker_id, deltas)
            return dict.fromkeys(totals, 0)
        return deltas

    def forget_others(self, present: Mapping[str, object]) -> None:
        """Drop the baselines of workers no longer seen (memory stays bounded by the live fleet)."""
        for worker_id in [w for w in self._seen if w not in present]:
            del self._seen[worker_id]


@dataclass(frozen=True)
class FinishedTask:
    """An event's numbers the latency window takes, once judged plausible."""

    ts: float
    latency_s: float
    solve_s: float


def finished_task(event: Event, entry_ms: int, now: float, rejections: Rejections) -> FinishedTask | None:
    """The event's latency and solve time, or None (not measured, or implausible: counted)."""
    latency = event.latency_s
    if latency is None:
        return None
    if latency > MAX_LATENCY_S:
        rejections.reject(EVENT, "latency-out-of-range", event.worker or event.id, latency)
        return None
    ts = event.ts if event.ts is not None else entry_ms / 1000
    if ts > now + MAX_CLOCK_SKEW_S:  # it would stay in the window for ever
        rejections.reject(EVENT, "ts-in-future", event.worker or event.id, ts)
        return None
    solve = event.api_s
    return FinishedTask(ts, latency, min(solve, latency) if solve else latency)


class CompletedCounter:
    """``{prefix}:stats:completed``: an integer >= 0 that grows no faster than results can be written.

    A value that is not is skipped (None: no rate sample this read); a decrease (the key was reset) starts a
    new baseline, reported so the caller resets its windows instead of producing a negative rate.
    """

    def __init__(self, rejections: Rejections) -> None:
        self.rejections = rejections
        self._last: tuple[float, int] | None = None

    def read(self, raw: bytes | str | None, now: float) -> tuple[int | None, bool]:
        """(the counter, or None when implausible; True when the windows must start over)."""
        value = _integer(raw)
        if value is None or value < 0:
            self.rejections.reject(COUNTER, "not-a-count", "completed", raw)
            return None, False
        last, self._last = self._last, (now, value)
        if last is None:
            return value, False
        if value < last[1]:
            self.rejections.reject(COUNTER, "decreased", "completed", f"{last[1]} -> {value}")
            return value, True
        if value - last[1] > max(0.0, now - last[0]) * MAX_RESULTS_PER_S + COUNTER_SLACK:
            self.rejections.reject(COUNTER, "too-fast", "completed", f"{last[1]} -> {value}")
            return value, True
        return value, False


def _integer(raw: bytes | str | None) -> int | None:
    """A Redis string holding a plain integer (absent: 0); None for anything else."""
    if raw is None:
        return 0
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    text = text.strip()
    if not text.isascii() or not text.lstrip("-").isdigit() or len(text) > 20:
        return None
    return int(text)
