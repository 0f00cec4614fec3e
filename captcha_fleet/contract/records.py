"""The records a worker writes to Redis: its heartbeat, a task's result, the finished-task event and the
stored CAPTCHA of a task in flight. The record a producer writes, the task, lives beside them in
:mod:`captcha_fleet.contract.tasks`.

One typed class each, with the one JSON (or stream-field) encoding every writer and reader uses, so a field
cannot mean two things in two places. The wire format is DESIGN.md's and docs/internals.md's; it does not
change here.

Decoding tolerates missing optional fields (older or hand-written records; they get the defaults below) and
ignores keys it does not know (newer writers; a result keeps them in ``extra`` so nothing is dropped on the way
through). Anything else (not JSON, not an object, a field of the wrong type, a number that is NaN or infinite:
``json.loads`` and ``float`` accept both, no writer of ours ever writes one) raises :class:`RecordError`, the
one way a reader learns that a record is unusable: readers skip such a record and count it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Self

__all__ = [
    "NOT_MEASURED",
    "Event",
    "Heartbeat",
    "RecordError",
    "Result",
    "StoredCaptcha",
]


class RecordError(ValueError):
    """A record that is not JSON, not a JSON object, or has a field of the wrong type or a non-finite number."""


def _object(raw: bytes | str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RecordError(f"not a JSON object: {type(value).__name__}")
    return value


class _JsonRecord:
    """A record whose wire form is one JSON object: every record is encoded (keys sorted) and refused (with
    :class:`RecordError`) the same way, around its own ``to_dict`` and ``from_mapping``."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Self:
        raise NotImplementedError

    def to_json(self) -> str:
        """The one encoding (keys sorted)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        """Decode the record; raises :class:`RecordError`."""
        return cls.from_mapping(_object(raw))


def _is_number(value: Any) -> bool:
    """A finite int or float (a bool is not a number; NaN and the infinities are not finite)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return not isinstance(value, float) or math.isfinite(value)


def _str(data: Mapping[str, Any], name: str, default: str) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise RecordError(f"{name}: expected a string, got {value!r}")
    return value


def _opt_str(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise RecordError(f"{name}: expected a string, got {value!r}")
    return value


def _int(data: Mapping[str, Any], name: str, default: int) -> int:
    value = data.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RecordError(f"{name}: expected an integer, got {value!r}")
    return value


def _opt_int(data: Mapping[str, Any], name: str) -> int | None:
    value = data.get(name)
    return None if value is None else _int(data, name, 0)


def _opt_float(data: Mapping[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if not _is_number(value):
        raise RecordError(f"{name}: expected a finite number, got {value!r}")
    return value  # type: ignore[no-any-return]  # int or float, kept as written


def _counts(data: Mapping[str, Any], name: str) -> dict[str, int]:
    value = data.get(name)
    value = {} if value is None else value
    if not isinstance(value, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        raise RecordError(f"{name}: expected an object of integer counts, got {value!r}")
    return {str(k): v for k, v in value.items()}


def _summary(data: Mapping[str, Any], name: str) -> dict[str, float | int | None]:
    value = data.get(name)
    value = {} if value is None else value
    if not isinstance(value, dict) or not all(v is None or _is_number(v) for v in value.values()):
        raise RecordError(f"{name}: expected an object of finite numbers, got {value!r}")
    return {str(k): v for k, v in value.items()}


@dataclass(frozen=True)
class Heartbeat(_JsonRecord):
    """What one worker process publishes under ``{prefix}:worker:<worker id>`` every heartbeat interval.

    The worker writes every field; a reader meets missing ones only in older or hand-written records.
    """

    id: str = ""
    host: str = ""
    instance: str = ""
    pid: int | None = None
    process: str = ""  # this process, as opposed to an earlier one restarted under the same name
    version: str = ""
    started_at: float | None = None
    ts: float | None = None  # wall clock of the beat
    state: str = "running"  # running | draining | fatal | failed | stopped
    target: int = 0
    slots: int = 0
    busy: int = 0
    fatal_error: str | None = None
    dead_threads: list[str] = field(default_factory=list)
    completed: int = 0
    succeeded: int = 0
    duplicates: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # by class: task, deadline, malformed, deadletter
    api_errors: dict[str, int] = field(default_factory=dict)  # by class: capacity, fatal, task, transport
    latency: dict[str, float | int | None] = field(default_factory=dict)  # count, p50, p95, p99
    api_latency: dict[str, float | int | None] = field(default_factory=dict)
    http_requests: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The wire form, every field."""
        return {
            "id": self.id,
            "host": self.host,
            "instance": self.instance,
            "pid": self.pid,
            "process": self.process,
            "version": self.version,
            "started_at": self.started_at,
            "ts": self.ts,
            "state": self.state,
            "target": self.target,
            "slots": self.slots,
            "busy": self.busy,
            "fatal_error": self.fatal_error,
            "dead_threads": list(self.dead_threads),
            "completed": self.completed,
            "succeeded": self.succeeded,
            "duplicates": self.duplicates,
            "failed": dict(self.failed),
            "api_errors": dict(self.api_errors),
            "latency": dict(self.latency),
            "api_latency": dict(self.api_latency),
            "http_requests": dict(self.http_requests),
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Self:
        """Check and type a decoded heartbeat; raises :class:`RecordError`."""
        dead = data.get("dead_threads")
        dead = [] if dead is None else dead
        if not isinstance(dead, list) or not all(isinstance(t, str) for t in dead):
            raise RecordError(f"dead_threads: expected a list of names, got {dead!r}")
        return cls(
            id=_str(data, "id", ""),
            host=_str(data, "host", ""),
            instance=_str(data, "instance", ""),
            pid=_opt_int(data, "pid"),
            process=_str(data, "process", ""),
            version=_str(data, "version", ""),
            started_at=_opt_float(data, "started_at"),
            ts=_opt_float(data, "ts"),
            state=_str(data, "state", "running"),
            target=_int(data, "target", 0),
            slots=_int(data, "slots", 0),
            busy=_int(data, "busy", 0),
            fatal_error=_opt_str(data, "fatal_error"),
            dead_threads=list(dead),
            completed=_int(data, "completed", 0),
            succeeded=_int(data, "succeeded", 0),
            duplicates=_int(data, "duplicates", 0),
            failed=_counts(data, "failed"),
            api_errors=_counts(data, "api_errors"),
            latency=_summary(data, "latency"),
            api_latency=_summary(data, "api_latency"),
            http_requests=_counts(data, "http_requests"),
        )

    def with_worker_id(self, worker_id: str) -> Heartbeat:
        """Host and instance filled in from the worker id (``host:instance``) where the record has none."""
        host, _, instance = worker_id.partition(":")
        return replace(self, id=self.id or worker_id, host=self.host or host, instance=self.instance or instance)


@dataclass(frozen=True)
class Result(_JsonRecord):
    """A task's one result, the field ``<task id>`` of ``{prefix}:results`` (and the notify list's element).

    ``{"status": "success", "token": ...}`` or ``{"status": "error", "error": ...}`` as the seed's consumers
    read it, with the worker's extra keys; fields left None are not written.
    """

    status: str  # success | error | duplicate
    token: str | None = None
    error: str | None = None
    error_class: str | None = None  # task | deadline | malformed | deadletter
    id: str | None = None
    method: str | None = None
    worker: str | None = None
    host: str | None = None
    attempts: int | None = None
    enqueued_at: float | None = None
    claimed_at: float | None = None
    finished_at: float | None = None
    latency_seconds: float | None = None
    api_seconds: float | None = None
    captcha_id: str | None = None
    resumed: bool | None = None  # True when it resumed polling a CAPTCHA an earlier worker paid for
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as they came

    @property
    def ok(self) -> bool:
        """Solved."""
        return self.status == "success"

    def to_dict(self) -> dict[str, Any]:
        """The wire form."""
        data: dict[str, Any] = dict(self.extra)
        data["status"] = self.status
        for name in _RESULT_OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return data

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Self:
        """Check and type a decoded result (only ``status`` is required); raises :class:`RecordError`."""
        status = data.get("status")
        if not isinstance(status, str):
            raise RecordError(f"status: expected a string, got {status!r}")
        resumed = data.get("resumed")
        if resumed is not None and not isinstance(resumed, bool):
            raise RecordError(f"resumed: expected true or false, got {resumed!r}")
        known = {"status", *_RESULT_OPTIONAL}
        return cls(
            status=status,
            token=_opt_str(data, "token"),
            error=_opt_str(data, "error"),
            error_class=_opt_str(data, "error_class"),
            id=_opt_str(data, "id"),
            method=_opt_str(data, "method"),
            worker=_opt_str(data, "worker"),
            host=_opt_str(data, "host"),
            attempts=_opt_int(data, "attempts"),
            enqueued_at=_opt_float(data, "enqueued_at"),
            claimed_at=_opt_float(data, "claimed_at"),
            finished_at=_opt_float(data, "finished_at"),
            latency_seconds=_opt_float(data, "latency_seconds"),
            api_seconds=_opt_float(data, "api_seconds"),
            captcha_id=_opt_str(data, "captcha_id"),
            resumed=resumed,
            extra={k: v for k, v in data.items() if k not in known},
        )


_RESULT_OPTIONAL = (
    "token",
    "error",
    "error_class",
    "id",
    "method",
    "worker",
    "host",
    "attempts",
    "enqueued_at",
    "claimed_at",
    "finished_at",
    "latency_seconds",
    "api_seconds",
    "captcha_id",
    "resumed",
)

NOT_MEASURED = -1  # a time on the wire that was not measured (api_s of a task never submitted)


@dataclass(frozen=True)
class Event:
    """One finished task in the ``{prefix}:events`` stream: what the controller's latency windows read."""

    id: str
    status: str
    error_class: str = ""  # "" for a success
    latency_s: float | None = None  # end to end: enqueued (or claimed) to finished
    api_s: float | None = None  # submitted to finished; None when never submitted
    worker: str = ""
    host: str = ""
    method: str = ""
    ts: float | None = None  # wall clock when finished; readers fall back on the stream entry's id

    def to_fields(self) -> dict[str, str | int | float]:
        """The stream entry's fields, in the order written."""
        return {
            "id": self.id,
            "status": self.status,
            "error_class": self.error_class,
            "latency_s": self.latency_s if self.latency_s is not None else NOT_MEASURED,
            "api_s": self.api_s if self.api_s is not None else NOT_MEASURED,
            "worker": self.worker,
            "host": self.host,
            "method": self.method,
            "ts": self.ts if self.ts is not None else NOT_MEASURED,
        }

    @classmethod
    def from_fields(cls, raw: Mapping[bytes, bytes] | Mapping[str, str]) -> Event:
        """Decode a stream entry's fields; a number that does not parse or is not finite raises :class:`RecordError`."""
        data = {_text(k): _text(v) for k, v in raw.items()}

        def number(name: str) -> float | None:
            text = data.get(name)
            if text is None:
                return None
            try:
                value = float(text)
            except ValueError:
                raise RecordError(f"{name}: expected a number, got {text!r}") from None
            if not math.isfinite(value):
                raise RecordError(f"{name}: expected a finite number, got {text!r}")
            return None if value < 0 else value  # negative: not measured (NOT_MEASURED)

        return cls(
            id=data.get("id", ""),
            status=data.get("status", ""),
            error_class=data.get("error_class", ""),
            latency_s=number("latency_s"),
            api_s=number("api_s"),
            worker=data.get("worker", ""),
            host=data.get("host", ""),
            method=data.get("method", ""),
            ts=number("ts"),
        )


@dataclass(frozen=True)
class StoredCaptcha:
    """A task's paid CAPTCHA in ``{prefix}:captcha_ids``: who takes the task over resumes it, never pays again.

    ``polls`` counts the polls started on it so far (written before each one), so the next worker keeps the
    provider's per-CAPTCHA budget without guessing; ``None`` in a record from a worker that did not count.
    """

    captcha_id: str
    submitted_at: float  # unix seconds
    worker: str = ""
    polls: int | None = None

    def to_json(self) -> str:
        """The one encoding."""
        data: dict[str, Any] = {"captcha_id": self.captcha_id, "submitted_at": self.submitted_at, "worker": self.worker}
        if self.polls is not None:
            data["polls"] = self.polls
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> StoredCaptcha:
        """Decode a stored CAPTCHA; raises :class:`RecordError`."""
        data = _object(raw)
        captcha_id = data.get("captcha_id")
        if not isinstance(captcha_id, str) or not captcha_id:
            raise RecordError(f"captcha_id: expected a non-empty string, got {captcha_id!r}")
        submitted_at = _opt_float(data, "submitted_at")
        if submitted_at is None:
            raise RecordError("submitted_at: missing")
        polls = _opt_int(data, "polls")
        if polls is not None and polls < 0:
            raise RecordError(f"polls: expected a count, got {polls!r}")
        return cls(captcha_id, float(submitted_at), _str(data, "worker", ""), polls)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
