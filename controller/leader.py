"""Leader election: one controller acts, the others stand by (a Redis lock with a TTL and an owner token).

The leader renews the lock every loop; if it dies the lock expires after ``ttl_s`` and a standby takes it.
Renewal and release compare the owner first (Lua), so a controller that lost the lock while paused can
never extend or delete its successor's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.client import Pipeline

from captcha_fleet.contract.ttl_lock import TtlLock


class LeadershipLostError(Exception):
    """The lock is someone else's now: whatever this process was about to write or do is dropped."""


class LeaderLock(TtlLock):
    """The controller's :class:`TtlLock`: ``hold()`` acquires or renews, ``ensure()`` fences an action."""

    def hold(self) -> bool:
        """True if this process is the leader after the call (take the free lock, or renew our own hold)."""
        return self.acquire()

    def current(self) -> str | None:
        """Who holds the lock now, if anyone."""
        return self.holder()

    def ensure(self) -> None:
        """Renew the hold or raise :class:`LeadershipLostError`: the check right before an action."""
        if not self.renew():
            raise LeadershipLostError(f"leader lock {self.key} is no longer held by {self.token}")

    @contextmanager
    def fenced(self) -> Iterator[Pipeline]:
        """A transaction that commits only while the lock holds our token (WATCH on the lock key).

        Queue writes on the yielded pipeline; they are applied atomically at the end of the block, or not
        at all (:class:`LeadershipLostError`) if a successor took the lock, even while this process was paused.
        """
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.key)  # type: ignore[no-untyped-call]
                holder = pipe.get(self.key)
                if holder is None or (holder.decode() if isinstance(holder, bytes) else str(holder)) != self.token:
                    raise LeadershipLostError(f"leader lock {self.key} is no longer held by {self.token}")
                pipe.multi()
                yield pipe
                pipe.execute()
            except redis.WatchError:
                raise LeadershipLostError(f"leader lock {self.key} changed hands during the write") from None
