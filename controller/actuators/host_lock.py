"""The per-host lock a scale run shares with ``rolling_update.yml`` and ``decommission.yml``.

A Redis key per host (``{prefix}:hostlock:<host>``, SET NX PX with an owner token): the actuator takes it for the
hosts of a run and gives it back afterwards; the playbooks take it through the fleet helper (``lock acquire``)
before they drain a host. The actuator holds it with a short TTL that it renews while its run goes on: a holder
that dies, or a controller cut off from Redis, leaves a lock that expires by itself within that TTL.
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


# KEYS[1] lock; ARGV[1] token, ARGV[2] ttl in ms. Extend only our own hold.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
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
        self._renew = client.register_script(_RENEW)

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

    def renew(self, hosts: Iterable[str], ttl_s: float) -> set[str]:
        """Extend our hold on ``hosts``; the hosts still ours (raises ``redis.RedisError`` if Redis is away)."""
        ttl_ms = max(1, int(ttl_s * 1000))
        return {h for h in hosts if self._renew(keys=[self.keys.host_lock(h)], args=[self.token, ttl_ms])}

    def release(self, hosts: Iterable[str]) -> None:
        for host in hosts:
            try:
                self._release(keys=[self.keys.host_lock(host)], args=[self.token])
            except redis.RedisError as exc:
                log.warning("host lock for %s not released (it expires): %s", host, exc)

    def _holder(self, host: str) -> str:
        value = self.client.get(self.keys.host_lock(host))
        return value.decode() if isinstance(value, bytes) else str(value)
