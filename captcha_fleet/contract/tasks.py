"""The task record, both ways: :class:`NewTask` is what a producer pushes (its one encoder), and
:func:`parse_task` turns a payload from the queue into a :class:`Task`, so a malformed one becomes an error
instead of a crash.

The wire format is DESIGN.md's ``{"id", "method", "params"}`` (extra keys allowed; our producers add
``enqueued_at``). A payload is accepted only if it can be stored, logged, sent and answered: valid UTF-8
JSON whose every string encodes back to UTF-8 (no lone surrogates), nested no deeper than :data:`MAX_DEPTH`,
with integers short enough to parse and print. Anything else is a :class:`Malformed`, with the task id when
one can be read, so the producer still hears back. A well-formed task that lacks a parameter its method requires
is the provider's kind of error, not a malformed payload: :meth:`Task.missing_param` names it, and the worker
answers it with the provider's own code without paying for a submit.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from captcha_fleet.contract.api_client import JsonScalar
from captcha_fleet.contract.methods import METHODS, Param

MAX_ID_LENGTH = 256
MAX_METHOD_LENGTH = 64
# CaptchaAI's method names: letters, digits, ``_``, ``-`` and ``.``; anything else is refused at the edge.
METHOD_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
# Objects and arrays nest at most this deep (a task is an object of scalars; room for producers' extras).
MAX_DEPTH = 16
# Integers longer than this are refused (Python refuses past 4,300 digits; no CAPTCHA needs more than 30).
MAX_INT_DIGITS = 30
# Form fields the worker sets (or the provider reads as its own); a producer may not give them.
RESERVED_PARAMS = frozenset({"key", "method", "json"})
# ``{"id": "..."`` at the very start of a payload, as producers' json.dumps writes it: an id readable even when
# the rest of the payload is not (broken JSON, nesting too deep for the decoder, longer than the limit).
_LEADING_ID = re.compile(rb'\A\s*\{\s*"id"\s*:\s*("(?:[^"\\\x00-\x1f]|\\.){1,256}")')
# The key of the stub ``worker/lua/claim_many.lua`` claims in place of a payload longer than the worker's limit:
# ``{"id": ..., "captcha_fleet:oversized": {"bytes": n, "limit": n}}`` (the payload itself stayed unread).
OVERSIZED_STUB_KEY = "captcha_fleet:oversized"


@dataclass(frozen=True)
class NewTask:
    """A task to submit; ``id`` is generated when not given."""

    method: str
    params: Mapping[str, Any]
    id: str | None = None

    def with_id(self) -> NewTask:
        """This task with its id set (a new random one when it has none)."""
        return self if self.id else NewTask(self.method, self.params, uuid.uuid4().hex)

    def to_json(self, enqueued_at: float | None = None) -> str:
        """The payload a producer pushes: compact JSON, a fresh id on each call for a task without one, and
        ``enqueued_at`` when given (workers measure queue time from it; the seed's producers leave it out)."""
        payload: dict[str, Any] = {
            "id": self.id or uuid.uuid4().hex,
            "method": self.method,
            "params": dict(self.params),
        }
        if enqueued_at is not None:
            payload["enqueued_at"] = enqueued_at
        return json.dumps(payload, separators=(",", ":"))


@dataclass(frozen=True)
class Task:
    """A well-formed task from ``{prefix}:tasks``."""

    id: str
    method: str
    params: dict[str, JsonScalar]
    enqueued_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def missing_param(self) -> Param | None:
        """A parameter the method table requires for this method that the task lacks (None for a method the
        table does not know: the provider judges those)."""
        entry = METHODS.get(self.method)
        return entry.missing(self.params) if entry is not None else None


@dataclass(frozen=True)
class Malformed:
    """A payload that cannot be solved; ``task_id`` is set when an error result can still be written.

    ``deadletter`` keeps the payload itself in the dead-letter list too: it could not be parsed, and its id
    was only salvaged from its first bytes (see :func:`salvage_id`).
    """

    reason: str
    task_id: str | None = None
    deadletter: bool = False


class _BadNumber:
    """An integer too long to parse safely, or NaN/Infinity: kept aside so the rest (the id) stays readable."""


def _parse_int(text: str) -> int | _BadNumber:
    return int(text) if len(text.lstrip("-")) <= MAX_INT_DIGITS else _BadNumber()


def _parse_constant(_name: str) -> _BadNumber:
    return _BadNumber()


def _reserved(name: str) -> bool:
    """A form field the worker sets itself, also as PHP reads look-alikes (``Key``, `` key``, ``key[]``)."""
    return name.split("[", 1)[0].strip().lower() in RESERVED_PARAMS


def loads_payload(raw: bytes) -> Any:
    """``json.loads`` that keeps NaN/Infinity and huge integers unparsed (a :class:`_BadNumber`, refused by
    :func:`encodable`) and turns a stack-deep nesting into a ValueError (the C decoder raises RecursionError
    cleanly, before the stack runs out; :func:`depth` bounds what is left).
    """
    try:
        return json.loads(raw, parse_int=_parse_int, parse_constant=_parse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def depth(value: Any) -> int:
    """How deep objects and arrays nest in a parsed value (a scalar is 0); iterative, so never recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            level += 1
            deepest = max(deepest, level)
            stack.extend((child, level) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def encodable(value: Any) -> bool:
    """Whether every string in ``value`` (keys too) encodes to UTF-8, and no integer is too long."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, _BadNumber):
            return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def salvage_id(raw: bytes) -> str | None:
    """The id of a payload that does not parse, when it opens the payload (``{"id": "..."``) and is usable."""
    match = _LEADING_ID.match(raw[: 2 * MAX_ID_LENGTH + 64])
    if match is None:
        return None
    try:
        task_id = json.loads(match.group(1))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_ID_LENGTH or not encodable(task_id):
        return None
    return task_id


def read_task_id(raw: bytes) -> str | None:
    """The payload's id if it can be used as a Redis field and a result (else None); never raises."""
    try:
        payload = loads_payload(raw)
    except (ValueError, UnicodeDecodeError):
        return salvage_id(raw)
    task_id = payload.get("id") if isinstance(payload, dict) else None
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_ID_LENGTH or not encodable(task_id):
        return None
    return task_id


def parse_task(raw: bytes, max_bytes: int) -> Task | Malformed:
    """Validate one raw payload against the wire format ``{"id", "method", "params"}``; never raises."""
    payload = _decode(raw, max_bytes)
    if isinstance(payload, Malformed):
        return payload
    task_id = payload.get("id")
    if not _usable_id(task_id):
        return Malformed(f"'id' must be a non-empty UTF-8 string of at most {MAX_ID_LENGTH} characters")
    if OVERSIZED_STUB_KEY in payload:
        return Malformed(_oversized_reason(payload[OVERSIZED_STUB_KEY]), task_id)
    reason = _payload_problem(payload) or _request_problem(payload)
    if reason is not None:
        return Malformed(reason, task_id)
    return _task(task_id, payload)


def _decode(raw: bytes, max_bytes: int) -> dict[str, Any] | Malformed:
    """The payload's JSON object; a payload too long (refused from its length, unparsed: parsing is the cost a
    limit is there to avoid) keeps an id salvaged from its start, one that is not JSON is dead-lettered too."""
    if len(raw) > max_bytes:
        return Malformed(f"payload of {len(raw)} bytes exceeds the limit of {max_bytes} bytes", salvage_id(raw))
    try:
        payload = loads_payload(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        salvaged = salvage_id(raw)
        return Malformed(f"payload is not JSON: {exc.__class__.__name__}", salvaged, deadletter=salvaged is not None)
    if not isinstance(payload, dict):
        return Malformed(f"payload is a JSON {type(payload).__name__}, expected an object")
    return payload


def _usable_id(task_id: object) -> TypeGuard[str]:
    """Whether ``task_id`` can be a Redis field and be answered: a short, non-empty, encodable string."""
    return isinstance(task_id, str) and bool(task_id) and len(task_id) <= MAX_ID_LENGTH and encodable(task_id)


def _oversized_reason(stub: Any) -> str:
    """The error a refused payload's producer reads, from the sizes its claim stub recorded."""
    sizes = stub if isinstance(stub, dict) else {}
    size, limit = sizes.get("bytes"), sizes.get("limit")
    if isinstance(size, int) and isinstance(limit, int):
        return f"payload of {size} bytes exceeds the limit of {limit} bytes (refused unread)"
    return "payload exceeds the size limit (refused unread)"


def _payload_problem(payload: dict[str, Any]) -> str | None:
    """Why the payload as a whole cannot be stored or answered (too deep, not encodable), if it can't."""
    if depth(payload) > MAX_DEPTH:
        return f"payload nests objects or arrays deeper than {MAX_DEPTH}"
    if not encodable(payload):
        return "payload holds a string that is not valid UTF-8, NaN/Infinity or an integer too long to parse"
    return None


def _request_problem(payload: dict[str, Any]) -> str | None:
    """Why ``method`` and ``params`` do not make a request the worker may send, if they don't."""
    method = payload.get("method")
    params = payload.get("params", {})
    return _method_problem(method) or _params_problem(params)


def _method_problem(method: Any) -> str | None:
    """Why ``method`` is not a CaptchaAI method name, if it isn't."""
    if not isinstance(method, str) or not method or len(method) > MAX_METHOD_LENGTH:
        return "'method' must be a non-empty string"
    if not METHOD_PATTERN.fullmatch(method):
        return "'method' may hold only letters, digits, '_', '-' and '.'"
    return None


def _params_problem(params: Any) -> str | None:
    """Why ``params`` is not an object of finite scalars the producer may set, if it isn't."""
    if not isinstance(params, dict):
        return "'params' must be an object"
    for name, value in params.items():
        shown = name[:64]
        if isinstance(value, float) and not math.isfinite(value):
            return f"params.{shown} must be finite"
        if not isinstance(value, str | int | float | bool):
            return f"params.{shown} must be a string, number or boolean"
        if _reserved(name):
            return f"params.{shown} is set by the worker and may not be given"
    return None


def _task(task_id: str, payload: dict[str, Any]) -> Task:
    """The validated payload as a :class:`Task`: producers' extra keys kept, a usable ``enqueued_at`` read."""
    stamp = payload.get("enqueued_at")
    enqueued_at: float | None = None
    if isinstance(stamp, int | float) and not isinstance(stamp, bool) and math.isfinite(stamp):
        enqueued_at = float(stamp)
    extra = {k: v for k, v in payload.items() if k not in ("id", "method", "params", "enqueued_at")}
    return Task(task_id, payload["method"], dict(payload.get("params", {})), enqueued_at, extra)
