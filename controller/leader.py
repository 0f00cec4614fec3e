"""Leader election: one controller acts, the others stand by (a Redis lock with a TTL and an owner token).

The leader renews the lock every loop; if it dies the lock expires after ``ttl_s`` and a standby takes it.
Renewal and release compare the owner first (Lua), so a controller that lost the lock while paused can
never extend or delete its successor's.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.client import Pipeline

# KEYS[1] lock; ARGV 1 token, 2 TTL ms. Renew only our own hold.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
"""
# KEYS[1] lock; ARGV 1 token. Delete only our own hold.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeadershipLostError(Exception):
    """The lock is someone else's now: whatever this process was about to write or do is dropped."""


def holder_id() -> str:
    """A readable, unique owner token: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaderLock:
    """``hold()`` acquires or renews; ``release()`` gives the lock up if it is ours."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: float, token: str | None = None) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.token = token or holder_id()
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def hold(self) -> bool:
        """True if this process is the leader after the call (SET NX PX, or renew our own hold)."""
        if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return True
        return bool(self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    def current(self) -> str | None:
        """Who holds the lock now, if anyone."""
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else None

    def release(self) -> None:
        """Step down (a clean shutdown), so a standby takes over at once rather than after the TTL."""
        self._release(keys=[self.key], args=[self.token])

    def ensure(self) -> None:
        """Renew the hold or raise :class:`LeadershipLostError`: the check right before an action."""
        if not bool(self._renew(keys=[self.key], args=[self.token, self.ttl_ms])):
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
