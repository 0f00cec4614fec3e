"""The game day's history checker (issue 23): did the fleet lose, pay twice, solve twice, recover, converge?

Jepsen's way: record what every side saw while faults were injected, then judge the whole history at the end. The
producer says what it was told ("queued" or refused), Redis holds the results and one event per winning result write,
the sandbox counts paid submits per ``pageurl`` (each task has its own page), an observer samples the fleet every
~0.5-1 s, and the lead's schedule names the fault windows. :func:`check` is pure, so each verdict is tested on
hand-built histories; the readers at the bottom are the only I/O.

Definitions (what bench/README.md's game-day table means):

* **lost**: acknowledged and no final result (none, or only the non-final ``duplicate``). A hostile payload is lost
  only when it has no final result; one that got a final result other than an ``error`` of class ``malformed`` or
  ``deadletter`` is reported apart as *hostile not refused*.
* **paid twice**: the provider accepted more than one submit for the task. **solved twice**: more than one winning
  result write (events) for it. **failed**: a task, not hostile, whose final result is not ``success``. A success
  with no payment, or a result with no event, is reported too: it means those two counts cannot be trusted.
* **A window** runs from the fault's start to its end plus a **settle margin** equal to its recovery target (10 s for
  process and Redis faults, one controller interval plus a service start for host faults): the fleet is allowed that
  long to absorb the fault, so tasks acknowledged then still feel it. Each task is counted in the *first* window its
  life (acknowledged .. finished, or for ever when unfinished) overlaps, else outside every window: per-window counts
  add up to the overall ones.
* **P95** is of end-to-end latency (finished minus acknowledged, else the record's ``latency_seconds``) of the final,
  non-hostile results, for tasks *acknowledged* inside a window vs. acknowledged outside every window.
* **Recovery** is the time from the fault's start (the end of an *operation*, a roll or a key rotation, and of a
  *provider* outage: no fleet serves while its API does not answer) to the first sample from which on the fleet is
  healthy (results flowing: ``results_total`` rose since the previous sample or the queue is empty; and running
  services >= desired: more is a scale-down draining) until the fault's end or its start plus the target (for
  operations and outages: from their end), whichever is later (and for at least :data:`HOLD_S`), cut at
  the next fault's start. A kill takes no time but its heartbeat outlives it, looking healthy until it expires:
  holding until the target is what makes recovery wait for the replacement (a disturbance that starts later than
  the target is past it anyway). What happens after a long fault is lifted (a cut host's services heartbeating
  again beside their replacements) is not recovery from it: it shows in the counts (settle margin) and at the end.
  ``None`` when the fleet is never healthy again.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis
import requests

from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import RecordError, Result
from captcha_fleet.contract.windows import percentile

# Which recovery target a fault window is judged against. "operation" is an operator's planned action (a rolling
# update, a key rotation through site.yml) and "provider" an outage of the API (a fault burst): both are judged from
# their end, since no fleet serves faster than its provider answers or while the operator's action runs.
EXPECTS = ("process", "redis", "host", "operation", "provider")
FROM_THE_END = frozenset({"operation", "provider"})
PROCESS_TARGET_S = 10.0  # recovery target of process and Redis faults (issue 23)
HOLD_S = 2.0  # healthy at least this long (and through the settle margin) to count as recovered
HOSTILE_ERROR_CLASSES = frozenset({"malformed", "deadletter"})
NON_FINAL = frozenset({"duplicate"})  # a status that answers nothing: the task's real result is missing
UNREADABLE = "unreadable"  # status given to a stored result that is not a result record
SHOWN_IDS = 10  # ids named in one violation; the rest are counted
PAGE = 1000  # stream entries or hash fields per round trip in the readers


class HistoryError(ValueError):
    """A history that cannot be judged: a missing or mistyped field, a bad fault kind, a non-finite number."""


# --- the history --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultWindow:
    """One injected fault: when it started and ended (wall time) and which recovery target applies."""

    name: str
    started_at: float
    ended_at: float
    expect: str  # process | redis | host
    notes: str = ""

    def __post_init__(self) -> None:
        if self.expect not in EXPECTS:
            raise HistoryError(f"fault {self.name!r}: expect must be one of {', '.join(EXPECTS)}, got {self.expect!r}")
        if self.ended_at < self.started_at:
            raise HistoryError(f"fault {self.name!r}: ends ({self.ended_at}) before it starts ({self.started_at})")


@dataclass(frozen=True)
class Sample:
    """What the observer saw at wall time ``t``; a count it could not read (Redis unreachable) is None."""

    t: float
    results_total: int | None
    queue_depth: int | None
    desired_services: int | None  # from the controller's decision; None if unknown
    running_services: int  # managed services with a live heartbeat
    hosts_draining: list[str] = field(default_factory=list)
    hosts_locked: list[str] = field(default_factory=list)


@dataclass
class EndState:
    """The fleet after the last fault and the producer's last task."""

    hosts_draining: list[str] = field(default_factory=list)
    hosts_locked: list[str] = field(default_factory=list)
    desired_services: int | None = None
    running_services: int = 0
    releases: dict[str, dict[str, str]] = field(default_factory=dict)  # host -> {"current": ..., "gated": ...}
    expected_release: dict[str, str] = field(default_factory=dict)  # host -> the good release or the rolled-back one


@dataclass
class History:
    """Everything recorded during a game day, keyed by task id where per task."""

    acks: dict[str, float] = field(default_factory=dict)  # task id -> wall time the producer was told "queued"
    refused: list[str] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # task id -> stored result record
    payments: dict[str, int] = field(default_factory=dict)  # task id -> submits the provider accepted
    winning_writes: dict[str, int] = field(default_factory=dict)  # task id -> events with that id
    faults: list[FaultWindow] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    end: EndState = field(default_factory=EndState)
    hostile: set[str] = field(default_factory=set)  # ids submitted as hostile payloads

    def to_json(self) -> str:
        """One JSON document (ids and sets sorted, so two equal histories encode alike)."""
        data = {
            "acks": dict(sorted(self.acks.items())),
            "refused": list(self.refused),
            "results": dict(sorted(self.results.items())),
            "payments": dict(sorted(self.payments.items())),
            "winning_writes": dict(sorted(self.winning_writes.items())),
            "faults": [vars(f) for f in self.faults],
            "samples": [vars(s) for s in self.samples],
            "end": vars(self.end),
            "hostile": sorted(self.hostile),
        }
        try:
            return json.dumps(data, allow_nan=False)
        except ValueError as exc:
            raise HistoryError(f"a history holds a non-finite number: {exc}") from None

    @classmethod
    def from_json(cls, raw: str | bytes) -> History:
        """Decode :meth:`to_json`'s document; raises :class:`HistoryError` naming the first bad field."""
        try:
            data = json.loads(raw, parse_constant=_no_constant)
        except ValueError as exc:
            raise HistoryError(f"history: not JSON: {exc}") from None
        top = _obj(data, "history")
        end = _obj(top.get("end", {}), "end")
        return cls(
            acks={k: _num(v, f"acks.{k}") for k, v in _obj(top.get("acks", {}), "acks").items()},
            refused=_strs(top.get("refused", []), "refused"),
            results={k: _obj(v, f"results.{k}") for k, v in _obj(top.get("results", {}), "results").items()},
            payments=_counts(top.get("payments", {}), "payments"),
            winning_writes=_counts(top.get("winning_writes", {}), "winning_writes"),
            faults=[_fault(f, f"faults[{i}]") for i, f in enumerate(_list(top.get("faults", []), "faults"))],
            samples=[_sample(s, f"samples[{i}]") for i, s in enumerate(_list(top.get("samples", []), "samples"))],
            end=EndState(
                hosts_draining=_strs(end.get("hosts_draining", []), "end.hosts_draining"),
                hosts_locked=_strs(end.get("hosts_locked", []), "end.hosts_locked"),
                desired_services=_opt_int(end.get("desired_services"), "end.desired_services"),
                running_services=_int(end.get("running_services", 0), "end.running_services"),
                releases={
                    host: {k: _str(v, f"end.releases.{host}.{k}") for k, v in _obj(rel, f"end.releases.{host}").items()}
                    for host, rel in _obj(end.get("releases", {}), "end.releases").items()
                },
                expected_release={
                    host: _str(v, f"end.expected_release.{host}")
                    for host, v in _obj(end.get("expected_release", {}), "end.expected_release").items()
                },
            ),
            hostile=set(_strs(top.get("hostile", []), "hostile")),
        )


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise HistoryError(f"{path}: expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise HistoryError(f"{path}: expected a list, got {type(value).__name__}")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise HistoryError(f"{path}: expected a string, got {value!r}")
    return value


def _strs(value: Any, path: str) -> list[str]:
    return [_str(v, f"{path}[{i}]") for i, v in enumerate(_list(value, path))]


def _num(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HistoryError(f"{path}: expected a finite number, got {value!r}")
    return float(value)


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HistoryError(f"{path}: expected an integer, got {value!r}")
    return value


def _opt_int(value: Any, path: str) -> int | None:
    return None if value is None else _int(value, path)


def _counts(value: Any, path: str) -> dict[str, int]:
    return {k: _int(v, f"{path}.{k}") for k, v in _obj(value, path).items()}


def _fault(value: Any, path: str) -> FaultWindow:
    data = _obj(value, path)
    return FaultWindow(
        name=_str(data.get("name"), f"{path}.name"),
        started_at=_num(data.get("started_at"), f"{path}.started_at"),
        ended_at=_num(data.get("ended_at"), f"{path}.ended_at"),
        expect=_str(data.get("expect"), f"{path}.expect"),
        notes=_str(data.get("notes", ""), f"{path}.notes"),
    )


def _sample(value: Any, path: str) -> Sample:
    data = _obj(value, path)
    return Sample(
        t=_num(data.get("t"), f"{path}.t"),
        results_total=_opt_int(data.get("results_total"), f"{path}.results_total"),
        queue_depth=_opt_int(data.get("queue_depth"), f"{path}.queue_depth"),
        desired_services=_opt_int(data.get("desired_services"), f"{path}.desired_services"),
        running_services=_int(data.get("running_services"), f"{path}.running_services"),
        hosts_draining=_strs(data.get("hosts_draining", []), f"{path}.hosts_draining"),
        hosts_locked=_strs(data.get("hosts_locked", []), f"{path}.hosts_locked"),
    )


# --- the report ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """The tasks that broke a promise, by id, among the tasks one row covers."""

    lost: list[str] = field(default_factory=list)
    paid_twice: dict[str, int] = field(default_factory=dict)  # id -> payments
    solved_twice: dict[str, int] = field(default_factory=dict)  # id -> winning writes
    failed: dict[str, str] = field(default_factory=dict)  # id -> "status/error_class"
    hostile_not_refused: dict[str, str] = field(default_factory=dict)  # id -> "status/error_class"

    def counts(self) -> dict[str, int]:
        """How many of each."""
        return {
            "lost": len(self.lost),
            "paid_twice": len(self.paid_twice),
            "solved_twice": len(self.solved_twice),
            "failed": len(self.failed),
            "hostile_not_refused": len(self.hostile_not_refused),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts(),
            "lost": list(self.lost),
            "paid_twice": dict(self.paid_twice),
            "solved_twice": dict(self.solved_twice),
            "failed": dict(self.failed),
            "hostile_not_refused": dict(self.hostile_not_refused),
        }


@dataclass(frozen=True)
class WindowReport:
    """One fault's verdict."""

    fault: FaultWindow
    target_s: float  # recovery target; also the settle margin after the fault's end
    recovery_s: float | None
    tally: Tally
    p95_s: float | None  # of tasks acknowledged inside the window; None when none finished
    p95_tasks: int

    @property
    def horizon(self) -> float:
        """The window's end plus its settle margin."""
        return self.fault.ended_at + self.target_s

    @property
    def recovered_in_time(self) -> bool:
        return self.recovery_s is not None and self.recovery_s <= self.target_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "fault": vars(self.fault),
            "target_s": self.target_s,
            "settle_s": self.target_s,
            "recovery_s": self.recovery_s,
            "recovered_in_time": self.recovered_in_time,
            "p95_s": self.p95_s,
            "p95_tasks": self.p95_tasks,
            **self.tally.to_dict(),
        }


@dataclass(frozen=True)
class Report:
    """The verdict on a whole history: per fault window, outside every window, in total, and at the end."""

    windows: list[WindowReport]
    outside: Tally  # tasks whose life overlapped no fault window
    total: Tally
    p95_outside_s: float | None
    p95_outside_tasks: int
    acknowledged: int
    refused: int
    converged: bool
    violations: list[str]

    @property
    def ok(self) -> bool:
        """Nothing broke."""
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "converged": self.converged,
            "violations": list(self.violations),
            "acknowledged": self.acknowledged,
            "refused": self.refused,
            "p95_outside_s": self.p95_outside_s,
            "p95_outside_tasks": self.p95_outside_tasks,
            "windows": [w.to_dict() for w in self.windows],
            "outside": self.outside.to_dict(),
            "total": self.total.to_dict(),
        }

    def table_markdown(self) -> str:
        """One row per fault and an overall row, as bench/README.md carries it."""
        lines = [
            "| fault | kind | recovery s (target) | lost | paid twice | solved twice | failed | P95 s (tasks) |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for w in self.windows:
            if w.recovery_s is None:
                recovery = f"never (≤ {_fmt(w.target_s)}) **missed**"
            else:
                missed = "" if w.recovered_in_time else " **missed**"
                recovery = f"{_fmt(w.recovery_s)} (≤ {_fmt(w.target_s)}){missed}"
            lines.append(_row(_cell(w.fault.name), w.fault.expect, recovery, w.tally, w.p95_s, w.p95_tasks, ""))
        in_time = sum(w.recovered_in_time for w in self.windows)
        state = "converged" if self.converged else "**not converged**"
        lines.append(
            _row(
                "**overall**",
                state,
                f"{in_time}/{len(self.windows)} in target",
                self.total,
                self.p95_outside_s,
                self.p95_outside_tasks,
                " outside windows",
            )
        )
        return "\n".join(lines) + "\n"


def _fmt(seconds: float) -> str:
    return f"{seconds:.1f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(name: str, kind: str, recovery: str, tally: Tally, p95: float | None, tasks: int, where: str) -> str:
    counts = tally.counts()
    p95_text = "-" if p95 is None else f"{p95:.2f}"
    cells = [
        name,
        kind,
        recovery,
        str(counts["lost"]),
        str(counts["paid_twice"]),
        str(counts["solved_twice"]),
        str(counts["failed"]),
        f"{p95_text} ({tasks}){where}",
    ]
    return "| " + " | ".join(cells) + " |"


# --- the checker --------------------------------------------------------------------------------------------


def target_seconds(expect: str, interval_s: float, service_start_s: float) -> float:
    """The recovery target: 10 s for process and Redis faults, one interval plus a service start for hosts."""
    return interval_s + service_start_s if expect == "host" else PROCESS_TARGET_S


@dataclass(frozen=True)
class _Fate:
    """One task as the checker sees it."""

    id: str
    acked_at: float | None
    result: Result | None  # the final result; None when there is none (or only a duplicate)
    started: float | None  # acknowledged (else enqueued or claimed, as the record says)
    finished: float | None  # None: never finished

    @property
    def latency_s(self) -> float | None:
        if self.result is None:
            return None
        if self.acked_at is not None and self.result.finished_at is not None:
            return max(0.0, self.result.finished_at - self.acked_at)
        return self.result.latency_seconds


def _decode(record: Mapping[str, Any] | None) -> Result | None:
    """The final result in a stored record; an unreadable record is a final, failed one."""
    if record is None:
        return None
    try:
        result = Result.from_mapping(record)
    except RecordError as exc:
        return Result(status=UNREADABLE, error=str(exc))
    return None if result.status in NON_FINAL else result


def _fates(history: History) -> dict[str, _Fate]:
    ids = set(history.acks) | set(history.results) | set(history.payments) | set(history.winning_writes)
    fates: dict[str, _Fate] = {}
    for task_id in ids | history.hostile:
        acked_at = history.acks.get(task_id)
        result = _decode(history.results.get(task_id))
        started = acked_at
        if started is None and result is not None:
            started = result.enqueued_at if result.enqueued_at is not None else result.claimed_at
        finished: float | None = None
        if result is not None:
            finished = result.finished_at
            if finished is None and started is not None and result.latency_seconds is not None:
                finished = started + result.latency_seconds
            if finished is None:
                finished = started  # finished at some unknown time: judge it where it began
        fates[task_id] = _Fate(task_id, acked_at, result, started, finished)
    return fates


def _outcome(result: Result) -> str:
    return f"{result.status}/{result.error_class}" if result.error_class else result.status


def _tally(fates: Iterable[_Fate], history: History) -> Tally:
    lost: list[str] = []
    paid: dict[str, int] = {}
    solved: dict[str, int] = {}
    failed: dict[str, str] = {}
    hostile: dict[str, str] = {}
    for fate in fates:
        task_id, result = fate.id, fate.result
        if fate.acked_at is not None and result is None:
            lost.append(task_id)
        if history.payments.get(task_id, 0) > 1:
            paid[task_id] = history.payments[task_id]
        if history.winning_writes.get(task_id, 0) > 1:
            solved[task_id] = history.winning_writes[task_id]
        if result is None:
            continue
        if task_id in history.hostile:
            if not (result.status == "error" and result.error_class in HOSTILE_ERROR_CLASSES):
                hostile[task_id] = _outcome(result)
        elif result.status != "success":
            failed[task_id] = _outcome(result)
    return Tally(
        lost=sorted(lost, key=_natural),
        paid_twice=dict(sorted(paid.items(), key=lambda kv: _natural(kv[0]))),
        solved_twice=dict(sorted(solved.items(), key=lambda kv: _natural(kv[0]))),
        failed=dict(sorted(failed.items(), key=lambda kv: _natural(kv[0]))),
        hostile_not_refused=dict(sorted(hostile.items(), key=lambda kv: _natural(kv[0]))),
    )


def _natural(task_id: str) -> list[Any]:
    """Sort key that puts t2 before t10."""
    return [
        (0, int(part), "") if part.isascii() and part.isdigit() else (1, 0, part)
        for part in re.split(r"([0-9]+)", task_id)
    ]


def _overlaps(fate: _Fate, start: float, horizon: float) -> bool:
    if fate.started is None:
        return False
    finished = math.inf if fate.finished is None else fate.finished
    return fate.started <= horizon and finished >= start


def _p95(fates: Iterable[_Fate], history: History) -> tuple[float | None, int]:
    values = [v for f in fates if f.id not in history.hostile and (v := f.latency_s) is not None]
    return (percentile(values, 0.95) if values else None), len(values)


def _healthy(previous: Sample | None, sample: Sample) -> bool:
    # More running than desired is a scale-down still draining: capacity is there, so it is healthy.
    if sample.desired_services is None or sample.running_services < sample.desired_services:
        return False
    if sample.queue_depth == 0:
        return True
    return (
        previous is not None
        and previous.results_total is not None
        and sample.results_total is not None
        and sample.results_total > previous.results_total
    )


def recovery_seconds(
    samples: Sequence[Sample], start: float, hold_until: float, stop: float = math.inf
) -> float | None:
    """Seconds from ``start`` to the first sample from which on the fleet stays healthy through ``hold_until`` (and
    at least :data:`HOLD_S`), looking no further than ``stop`` (the next fault's start); None if never."""
    ordered = sorted(samples, key=lambda s: s.t)
    healthy = [_healthy(ordered[i - 1] if i else None, s) for i, s in enumerate(ordered)]
    next_bad = [math.inf] * (len(ordered) + 1)  # time of the first unhealthy sample at or after each index
    for i in range(len(ordered) - 1, -1, -1):
        next_bad[i] = next_bad[i + 1] if healthy[i] else ordered[i].t
    for i, sample in enumerate(ordered):
        if sample.t < start or not healthy[i]:
            continue
        until = min(max(hold_until, sample.t + HOLD_S), stop)
        if next_bad[i] > until:
            return sample.t - start
    return None


def _origin(fault: FaultWindow) -> float:
    """Where recovery is counted from: a fault's start, an operation's end."""
    return fault.ended_at if fault.expect in FROM_THE_END else fault.started_at


def check(history: History, interval_s: float, service_start_s: float) -> Report:
    """Judge a recorded game day (see the module's docstring for every definition)."""
    fates = _fates(history)
    faults = sorted(history.faults, key=lambda f: f.started_at)
    targets = [target_seconds(f.expect, interval_s, service_start_s) for f in faults]
    spans = [(f.started_at, f.ended_at + target) for f, target in zip(faults, targets, strict=True)]

    members: list[list[_Fate]] = [[] for _ in faults]
    outside: list[_Fate] = []
    for fate in fates.values():
        home = next((i for i, (start, horizon) in enumerate(spans) if _overlaps(fate, start, horizon)), None)
        (outside if home is None else members[home]).append(fate)

    acked = [f for f in fates.values() if f.acked_at is not None]
    windows: list[WindowReport] = []
    for i, (fault, target) in enumerate(zip(faults, targets, strict=True)):
        start, horizon = spans[i]
        stop = faults[i + 1].started_at if i + 1 < len(faults) else math.inf
        inside = [f for f in acked if start <= cast(float, f.acked_at) <= horizon]
        p95, count = _p95(inside, history)
        windows.append(
            WindowReport(
                fault=fault,
                target_s=target,
                recovery_s=recovery_seconds(
                    history.samples, origin := _origin(fault), max(fault.ended_at, origin + target), stop
                ),
                tally=_tally(members[i], history),
                p95_s=p95,
                p95_tasks=count,
            )
        )
    quiet = [f for f in acked if not any(s <= cast(float, f.acked_at) <= h for s, h in spans)]
    p95_outside, outside_count = _p95(quiet, history)
    total = _tally(fates.values(), history)
    outside_tally = _tally(outside, history)
    end_violations = _end_violations(history.end)
    return Report(
        windows=windows,
        outside=outside_tally,
        total=total,
        p95_outside_s=p95_outside,
        p95_outside_tasks=outside_count,
        acknowledged=len(history.acks),
        refused=len(history.refused),
        converged=not end_violations,
        violations=[
            *_task_violations(total, windows, outside_tally),
            *_evidence_violations(fates.values(), history),
            *_recovery_violations(windows),
            *end_violations,
        ],
    )


# --- violations, in plain words -----------------------------------------------------------------------------


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _named(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SHOWN_IDS])
    return shown if len(items) <= SHOWN_IDS else f"{shown} and {len(items) - SHOWN_IDS} more"


def _where(task_ids: Iterable[str], windows: Sequence[WindowReport], outside: Tally, pick: str) -> str:
    """Which rows the tasks fall in, e.g. " (kill-primary: 2, outside any fault: 1)"."""
    wanted = set(task_ids)
    parts = []
    for name, tally in [*((w.fault.name, w.tally) for w in windows), ("outside any fault", outside)]:
        found = len(wanted & set(getattr(tally, pick)))
        if found:
            parts.append(f"{name}: {found}")
    return f" ({', '.join(parts)})" if parts else ""


def _task_violations(total: Tally, windows: Sequence[WindowReport], outside: Tally) -> list[str]:
    out: list[str] = []
    if total.lost:
        where = _where(total.lost, windows, outside, "lost")
        n = len(total.lost)
        out.append(
            f"{_plural(n, 'acknowledged task has', 'acknowledged tasks have')} no result: {_named(total.lost)}{where}"
        )
    # (the counts by task, how one reads, singular and plural subject, what happened, the fault windows' field)
    counted: list[tuple[Mapping[str, object], str, tuple[str, str], str, str | None]] = [
        (total.paid_twice, "{} ({} times)", ("task was", "tasks were"), "paid more than once", "paid_twice"),
        (
            total.solved_twice,
            "{} ({} writes)",
            ("task was", "tasks were"),
            "solved more than once (winning result writes)",
            "solved_twice",
        ),
        (total.failed, "{} ({})", ("task", "tasks"), "failed", "failed"),
        (
            total.hostile_not_refused,
            "{} ({})",
            ("hostile payload was", "hostile payloads were"),
            "not refused as malformed or dead-lettered",
            None,  # not broken down by fault window
        ),
    ]
    for counts, item, (one, many), what, pick in counted:
        if counts:
            items = [item.format(k, v) for k, v in counts.items()]
            where = _where(counts, windows, outside, pick) if pick else ""
            out.append(f"{_plural(len(items), one, many)} {what}: {_named(items)}{where}")
    return out


def _evidence_violations(fates: Iterable[_Fate], history: History) -> list[str]:
    """Paid twice and solved twice are only as good as their counts: a success nobody paid for, or a result without
    its event, means a reader missed something (a ``pageurl`` not ``<prefix><task id>``, a capped events stream)."""
    unpaid: list[str] = []
    silent: list[str] = []
    for fate in fates:
        if fate.result is None:
            continue
        if fate.result.ok and fate.id not in history.hostile and history.payments.get(fate.id, 0) == 0:
            unpaid.append(fate.id)
        if history.winning_writes.get(fate.id, 0) == 0:
            silent.append(fate.id)
    out: list[str] = []
    if unpaid:
        out.append(
            f"{_plural(len(unpaid), 'solved task has', 'solved tasks have')} no payment recorded (is each task's "
            f"pageurl its own?): {_named(sorted(unpaid, key=_natural))}"
        )
    if silent:
        out.append(
            f"{_plural(len(silent), 'result has', 'results have')} no event (was the events stream trimmed? raise "
            f"results.events_maxlen): {_named(sorted(silent, key=_natural))}"
        )
    return out


def _recovery_violations(windows: Sequence[WindowReport]) -> list[str]:
    out: list[str] = []
    for w in windows:
        label = f"fault {w.fault.name!r} ({w.fault.expect})"
        if w.recovery_s is None:
            out.append(f"{label}: the fleet never recovered (target {_fmt(w.target_s)} s)")
        elif not w.recovered_in_time:
            out.append(f"{label}: recovered after {_fmt(w.recovery_s)} s, over the {_fmt(w.target_s)} s target")
    return out


def _end_violations(end: EndState) -> list[str]:
    out: list[str] = []
    if end.desired_services is None:
        out.append("end: the controller's desired service count is unknown")
    elif end.running_services != end.desired_services:
        out.append(
            f"end: {_plural(end.running_services, 'service', 'services')} running, {end.desired_services} desired"
        )
    if end.hosts_draining:
        out.append(
            f"end: {_plural(len(end.hosts_draining), 'host', 'hosts')} left draining: "
            f"{_named(sorted(end.hosts_draining))}"
        )
    if end.hosts_locked:
        out.append(
            f"end: {_plural(len(end.hosts_locked), 'host', 'hosts')} left locked: {_named(sorted(end.hosts_locked))}"
        )
    for host, expected in sorted(end.expected_release.items()):
        current = end.releases.get(host, {}).get("current")
        if current is None:
            out.append(f"end: host {host} has no current release recorded, expected {expected}")
        elif current != expected:
            out.append(f"end: host {host} runs release {current}, expected {expected}")
    return out


# --- readers (the only I/O) ---------------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def read_results(client: redis.Redis, keys: Keys, page: int = PAGE) -> dict[str, dict[str, Any]]:
    """Every stored result (HSCAN, about ``page`` fields a round trip); one that is not a JSON object is kept as an
    ``unreadable`` record, so the checker counts it instead of losing it."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in client.hscan_iter(keys.results, count=page):
        try:
            record = json.loads(value)
        except ValueError as exc:
            record = {"status": UNREADABLE, "error": f"not JSON: {exc}"}
        if not isinstance(record, dict):
            record = {"status": UNREADABLE, "error": f"not a JSON object: {type(record).__name__}"}
        out[_text(name)] = record
    return out


def read_winning_writes(client: redis.Redis, keys: Keys, page: int = PAGE) -> dict[str, int]:
    """Events per task id in ``keys.events`` (XRANGE, ``page`` entries a round trip).

    The stream is capped (``results.events_maxlen``): a game day must keep it longer than its task count, or the
    oldest writes are not seen.
    """
    counts: Counter[str] = Counter()
    start = "-"
    while True:
        entries = cast(
            "list[tuple[bytes | str, dict[bytes | str, bytes | str]]]",
            client.xrange(keys.events, min=start, max="+", count=page),
        )
        for _, fields in entries:
            task_id = next((_text(v) for k, v in fields.items() if _text(k) == "id"), None)
            if task_id is not None:
                counts[task_id] += 1
        if len(entries) < page:
            return dict(counts)
        start = f"({_text(entries[-1][0])}"


def payments_by_task(per_page: Mapping[str, int], page_prefix: str) -> dict[str, int]:
    """The sandbox's paid submits per ``pageurl`` as task id -> payments, for pages ``<page_prefix><task id>``."""
    return {page.removeprefix(page_prefix): n for page, n in per_page.items() if page.startswith(page_prefix)}


def read_payments(sandbox_url: str, page_prefix: str, timeout_s: float = 10.0) -> dict[str, int]:
    """Task id -> payments from a sandbox in another process (``GET /admin/payments``)."""
    response = requests.get(f"{sandbox_url.rstrip('/')}/admin/payments", timeout=timeout_s)
    response.raise_for_status()
    per_page = response.json()
    if not isinstance(per_page, dict):
        raise HistoryError(f"/admin/payments: expected an object, got {type(per_page).__name__}")
    return payments_by_task({str(k): _int(v, f"payments.{k}") for k, v in per_page.items()}, page_prefix)
