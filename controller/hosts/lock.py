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

from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.ttl_lock import LockScripts, TtlLock, holder_id

log = logging.getLogger(__name__)


class RedisHostLock:
    """``acquire`` the hosts a run may touch now; ``release`` them after (one :class:`TtlLock` per host key)."""

    def __init__(self, client: redis.Redis, keys: Keys, token: str | None = None) -> None:
        self.client = client
        self.keys = keys
        self.token = f"actuator:{token or holder_id()}"
        self._scripts = LockScripts(client)

    def _lock(self, host: str, ttl_s: float = 1.0) -> TtlLock:
        return TtlLock(self.client, self.keys.host_lock(host), ttl_s, self.token, self._scripts)

    def acquire(self, hosts: Iterable[str], ttl_s: float) -> set[str]:
        """The hosts whose lock we now hold (the others are held by a roll or decommission, or Redis failed)."""
        got: set[str] = set()
        for host in hosts:
            lock = self._lock(host, ttl_s)
            try:
                # Not reentrant: a host this actuator already holds belongs to a run still going on.
                if lock.acquire(reentrant=False):
                    got.add(host)
                else:
                    log.info("host %s is locked by %s: not scaling it now", host, lock.holder())
            except redis.RedisError as exc:
                log.warning("host lock for %s: %s", host, exc)
        return got

    def renew(self, hosts: Iterable[str], ttl_s: float) -> set[str]:
        """Extend our hold on ``hosts``; the hosts still ours (raises ``redis.RedisError`` if Redis is away)."""
        return {h for h in hosts if self._lock(h, ttl_s).renew()}

    def release(self, hosts: Iterable[str]) -> None:
        """Give back the hosts' locks that are still ours; one Redis failure leaves that lock to expire."""
        for host in hosts:
            try:
                self._lock(host).release()
            except redis.RedisError as exc:
                log.warning("host lock for %s not released (it expires): %s", host, exc)
