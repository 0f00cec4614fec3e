"""A Redis lock with a TTL and an owner token: a holder that dies frees it by expiry."""

from __future__ import annotations

import uuid

import redis

from captcha_fleet.worker.scripts import Scripts


class TtlLock:
    """``acquire`` takes the lock or renews our hold; only the holder can ``release``."""

    def __init__(self, client: redis.Redis, scripts: Scripts, key: str, ttl_s: float) -> None:
        self.client = client
        self.scripts = scripts
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.token = uuid.uuid4().hex

    def acquire(self) -> bool:
        """Take the lock if it is free or ours; refresh its TTL."""
        return bool(self.scripts.acquire_lock(keys=[self.key], args=[self.token, self.ttl_ms], client=self.client))

    def release(self) -> None:
        """Give the lock up if we still hold it."""
        self.scripts.release_lock(keys=[self.key], args=[self.token], client=self.client)
