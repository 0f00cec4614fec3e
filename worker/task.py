"""Parsing task payloads from the queue, so a malformed one becomes an error instead of a crash."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from worker.api_client import JsonScalar

MAX_ID_LENGTH = 256
MAX_METHOD_LENGTH = 64
# Beyond this many bytes a payload is not even parsed: it is dead-lettered with a prefix of itself.
UNPARSEABLE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Task:
    """A well-formed task from ``{prefix}:tasks``."""

    id: str
    method: str
    params: dict[str, JsonScalar]
    enqueued_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Malformed:
    """A payload that cannot be solved; ``task_id`` is set when an error result can still be written."""

    reason: str
    task_id: str | None = None


def parse_task(raw: bytes, max_bytes: int) -> Task | Malformed:
    """Validate one raw payload against the wire format ``{"id", "method", "params"}``."""
    if len(raw) > UNPARSEABLE_BYTES:
        return Malformed(f"payload of {len(raw)} bytes exceeds {max_bytes} bytes")
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return Malformed(f"payload is not JSON: {exc.__class__.__name__}")
    if not isinstance(payload, dict):
        return Malformed(f"payload is a JSON {type(payload).__name__}, expected an object")
    task_id = payload.get("id")
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_ID_LENGTH:
        return Malformed(f"'id' must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    if len(raw) > max_bytes:
        return Malformed(f"payload of {len(raw)} bytes exceeds the limit of {max_bytes} bytes", task_id)
    method = payload.get("method")
    if not isinstance(method, str) or not method or len(method) > MAX_METHOD_LENGTH:
        return Malformed("'method' must be a non-empty string", task_id)
    params = payload.get("params", {})
    if not isinstance(params, dict):
        return Malformed("'params' must be an object", task_id)
    for name, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            return Malformed(f"params.{name} must be finite", task_id)
        if not isinstance(value, str | int | float | bool):
            return Malformed(f"params.{name} must be a string, number or boolean", task_id)
        if name in ("key", "method", "json"):
            return Malformed(f"params.{name} is set by the worker and may not be given", task_id)
    if method == "post" and not isinstance(params.get("file"), str):
        return Malformed("method 'post' needs params.file (the image, base64-encoded)", task_id)
    stamp = payload.get("enqueued_at")
    enqueued_at: float | None = None
    if isinstance(stamp, int | float) and not isinstance(stamp, bool) and math.isfinite(stamp):
        enqueued_at = float(stamp)
    extra = {k: v for k, v in payload.items() if k not in ("id", "method", "params", "enqueued_at")}
    return Task(task_id, method, dict(params), enqueued_at, extra)
