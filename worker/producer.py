"""The producer side: push tasks in the seed's wire format and wait for results without polling."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

import redis

from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import Result
from captcha_fleet.contract.redis_connect import Durability
from captcha_fleet.contract.tasks import NewTask

# A blocking read lasts at most this long before the hash is read again (a result from an older worker).
WAIT_SLICE_S = 10.0


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
        that already has a result is not solved again). A push the client retried after a lost reply can queue the
        same bytes twice: the worker that claims the second copy while the first is held drops it (``hold.lua``).
        """
        now = time.time()
        named = [task.with_id() for task in tasks]
        ids = [str(task.id) for task in named]
        payloads = [task.to_json(enqueued_at=now) for task in named]
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

        The worker's finish script appends the result to a per-task stream with a TTL; XREAD BLOCK reads it without
        consuming it, so every waiter on the task sees it, a waiter that arrives late still finds it, and the
        producer's ACL user needs no write there (it can neither steal nor forge a wake-up). The hash is read again
        after each blocking read that times out: a result older than the stream's TTL, or one written by a worker
        of an older release (which wakes only BLPOP waiters), is found there.
        """
        existing = self.result(task_id)
        if existing is not None:
            return existing
        stream = self.keys.done(task_id)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self.result(task_id)
            block_ms = max(1, int(min(remaining, self._slice_s()) * 1000))
            replies = self.client.xread({stream: "0"}, count=1, block=block_ms)
            raw = _first_result(replies)
            if raw is not None:
                return _decode(raw)
            existing = self.result(task_id)
            if existing is not None:
                return existing

    def _slice_s(self) -> float:
        """How long one blocking read may last: within the client's read timeout, if it has one."""
        kwargs = getattr(self.client.connection_pool, "connection_kwargs", {})
        read_timeout = kwargs.get("socket_timeout")
        return min(WAIT_SLICE_S, read_timeout / 2) if read_timeout else WAIT_SLICE_S

    def solve(self, method: str, params: Mapping[str, Any], timeout_s: float = 200.0) -> dict[str, Any] | None:
        """Submit one task and wait for its result."""
        return self.wait(self.submit(method, params), timeout_s)


def _first_result(replies: Any) -> bytes | str | None:
    """The ``result`` field of the first entry an XREAD returned, if any (RESP2 list or RESP3 dict replies)."""
    streams = list(replies.values()) if isinstance(replies, dict) else [entries for _, entries in replies or []]
    for entries in streams:
        for _, fields in entries or []:
            raw = fields.get(b"result", fields.get("result"))
            if raw is not None:
                return cast("bytes | str", raw)
    return None


def _decode(raw: bytes | str) -> dict[str, Any]:
    """The result as plain data, checked by its record (a malformed one raises ``RecordError``, a ValueError)."""
    return Result.from_json(raw).to_dict()
