"""Leader election: one controller acts, the others stand by (a Redis lock with a TTL and an owner token).

The leader renews the lock every loop; if it dies the lock expires after ``ttl_s`` and a standby takes it.
Renewal and release compare the owner first (Lua), so a controller that lost the lock while paused can
never extend or delete its successor's.
"""

from __future__ import annotations

import os
import socket
import uuid

import redis

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
