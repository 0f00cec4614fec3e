"""The per-host lock a scale run shares with ``rolling_update.yml`` and ``decommission.yml``.

A Redis key per host (``{prefix}:hostlock:<host>``, SET NX PX with an owner token): the actuator takes it for the
hosts of a run and gives it back afterwards; the playbooks take it through the fleet helper (``lock acquire``)
before they drain a host. A holder that dies leaves a lock that expires by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis

from captcha_fleet.controller.leader import holder_id
from captcha_fleet.keys import Keys

log = logging.getLogger(__name__)

# KEYS[1] lock; ARGV[1] token. Delete only our own hold.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisHostLock:
    """``acquire`` the hosts a run may touch now; ``release`` them after."""

    def __init__(self, client: redis.Redis, keys: Keys, token: str | None = None) -> None:
        self.client = client
        self.keys = keys
        self.token = f"actuator:{token or holder_id()}"
        self._release = client.register_script(_RELEASE)

    def acquire(self, hosts: Iterable[str], ttl_s: float) -> set[str]:
        """The hosts whose lock we now hold (the others are held by a roll or decommission, or Redis failed)."""
        got: set[str] = set()
        ttl_ms = max(1, int(ttl_s * 1000))
        for host in hosts:
            try:
                if self.client.set(self.keys.host_lock(host), self.token, nx=True, px=ttl_ms):
                    got.add(host)
                else:
                    log.info("host %s is locked by %s: not scaling it now", host, self._holder(host))
            except redis.RedisError as exc:
                log.warning("host lock for %s: %s", host, exc)
        return got

    def release(self, hosts: Iterable[str]) -> None:
        for host in hosts:
            try:
                self._release(keys=[self.keys.host_lock(host)], args=[self.token])
            except redis.RedisError as exc:
                log.warning("host lock for %s not released (it expires): %s", host, exc)

    def _holder(self, host: str) -> str:
        value = self.client.get(self.keys.host_lock(host))
        return value.decode() if isinstance(value, bytes) else str(value)
