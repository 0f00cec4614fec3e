"""Oversized ``post`` tasks laid out byte by byte, for the test and the benchmark of oversized payloads: the
claim script must find the task's id wherever a producer's JSON encoder put it (first, after the big value,
last, or nowhere) without decoding the body, and never take the decoy ``id`` inside ``params``."""

from __future__ import annotations

import json

ID_PLACES = ("first", "middle", "last")


def big_post_task(task_id: str, place: str, body: bytes) -> bytes:
    """A ``post`` task carrying ``body``, its id ``place``d as one of :data:`ID_PLACES` (any other: no id)."""
    tid = json.dumps(task_id).encode()
    params = b'{"file": "' + body + b'", "id": "not-this-one"}'
    if place == "first":
        return b'{"id": ' + tid + b', "method": "post", "params": ' + params + b"}"
    if place == "middle":
        return b'{"params": ' + params + b', "id": ' + tid + b', "method": "post"}'
    if place == "last":
        return b'{"method": "post", "params": ' + params + b', "id": ' + tid + b"}"
    return b'{"method": "post", "params": ' + params + b"}"
