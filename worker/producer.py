"""The producer side: push tasks in the seed's wire format and wait for results without polling."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from captcha_fleet.keys import Keys
from captcha_fleet.records import Result
from captcha_fleet.redis_connect import Durability


@dataclass(frozen=True)
class NewTask:
    """A task to submit; ``id`` is generated when not given."""

    method: str
    params: Mapping[str, Any]
    id: str | None = None


class Producer:
    """``submit`` tasks, ``wait`` for a result (a blocking read with a timeout), or ``solve`` = both."""

    def __init__(self, client: redis.Redis, keys: Keys, durability: Durability | None = None) -> None:
        self.client = client
        self.keys = keys
        # With replicas, submit returns only once they hold the tasks (a failover then cannot lose them).
        self.durability = durability or Durability()

    def submit(self, method: str, params: Mapping[str, Any], task_id: str | None = None) -> str:
        """Queue one task; return its id."""
        return self.submit_many([NewTask(method, params, task_id)])[0]

    def submit_many(self, tasks: Iterable[NewTask]) -> list[str]:
        """Queue many tasks in one round trip; return their ids in order.

        Raises ``NotReplicatedError`` when replicas are required and did not confirm in time: the tasks are
        queued on the primary but a failover could lose them; submitting the same ids again is safe (a task
        that already has a result is not solved again).
        """
        ids: list[str] = []
        payloads: list[str] = []
        now = time.time()
        for task in tasks:
            task_id = task.id or uuid.uuid4().hex
            ids.append(task_id)
            payload = {"id": task_id, "method": task.method, "params": dict(task.params), "enqueued_at": now}
            payloads.append(json.dumps(payload, separators=(",", ":")))
        if payloads:
            pipe = self.client.pipeline(transaction=False)
            pipe.rpush(self.keys.tasks, *payloads)
            self.durability.execute(pipe)
        return ids

    def result(self, task_id: str) -> dict[str, Any] | None:
        """The task's result if it has one (non-blocking)."""
        raw = self.client.hget(self.keys.results, task_id)
        return _decode(raw) if raw is not None else None

    def wait(self, task_id: str, timeout_s: float) -> dict[str, Any] | None:
        """Block until the task's result arrives or ``timeout_s`` passes (then None).

        The worker pushes the result onto a per-task notify list with a TTL, so a waiter that arrives
        late still finds it; the hash is checked too, for results older than the notify TTL.
        """
        existing = self.result(task_id)
        if existing is not None:
            return existing
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self.result(task_id)
            popped = self.client.blpop([self.keys.notify(task_id)], timeout=min(remaining, 30.0))
            if popped is not None:
                # Put it back for any other waiter on the same task; the key keeps its TTL.
                self.client.rpush(self.keys.notify(task_id), popped[1])
                return _decode(popped[1])

    def solve(self, method: str, params: Mapping[str, Any], timeout_s: float = 200.0) -> dict[str, Any] | None:
        """Submit one task and wait for its result."""
        return self.wait(self.submit(method, params), timeout_s)


def _decode(raw: bytes | str) -> dict[str, Any]:
    """The result as plain data, checked by its record (a malformed one raises ``RecordError``, a ValueError)."""
    return Result.from_json(raw).to_dict()
