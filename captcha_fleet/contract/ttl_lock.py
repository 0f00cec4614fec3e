"""The one owner-token lock with a TTL (the reaper's, the leader's and the per-host lock).

A holder that dies frees the lock by expiry; renewal and release compare the owner first (in Lua), so a process
that lost the lock while paused can never extend or delete its successor's hold.
"""

from __future__ import annotations

import os
import socket
import uuid

import redis
from redis.commands.core import Script

# KEYS[1] lock; ARGV 1 token, 2 TTL ms. Take the lock if it is free or already ours, and (re)set its TTL.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
"""
# KEYS[1] lock; ARGV 1 token, 2 TTL ms. Extend only our own hold.
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


def ttl_ms(ttl_s: float) -> int:
    """A TTL in whole milliseconds, at least 1 (PX refuses 0)."""
    return max(1, int(ttl_s * 1000))


class LockScripts:
    """The three scripts bound to one client: register them once and share them between the locks of a process."""

    def __init__(self, client: redis.Redis) -> None:
        self.acquire: Script = client.register_script(_ACQUIRE)
        self.renew: Script = client.register_script(_RENEW)
        self.release: Script = client.register_script(_RELEASE)


class TtlLock:
    """``acquire`` takes or renews the lock, ``renew`` only extends our hold, ``release`` only drops our hold."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        ttl_s: float,
        token: str | None = None,
        scripts: LockScripts | None = None,
    ) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = ttl_ms(ttl_s)
        self.token = token or holder_id()
        self.scripts = scripts or LockScripts(client)

    def acquire(self, *, reentrant: bool = True) -> bool:
        """Take the lock if it is free (or already ours, unless ``reentrant`` is False); set its TTL."""
        if not reentrant:
            return bool(self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))
        return bool(self.scripts.acquire(keys=[self.key], args=[self.token, self.ttl_ms], client=self.client))

    def renew(self) -> bool:
        """Extend the TTL if the lock is still ours; False when it expired or changed hands."""
        return bool(self.scripts.renew(keys=[self.key], args=[self.token, self.ttl_ms], client=self.client))

    def release(self) -> bool:
        """Give the lock up if we still hold it; True when it was ours."""
        return bool(self.scripts.release(keys=[self.key], args=[self.token], client=self.client))

    def holder(self) -> str | None:
        """Who holds the lock now, if anyone."""
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else None
