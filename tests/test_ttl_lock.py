"""The one owner-token TTL lock (captcha_fleet.contract.ttl_lock) against a real Redis."""

from __future__ import annotations

import time

import redis

from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.ttl_lock import LockScripts, TtlLock, holder_id, ttl_ms


def test_acquire_is_exclusive_and_reentrant_for_the_holder(r: redis.Redis, keys: Keys) -> None:
    a = TtlLock(r, keys.reaper_lock, ttl_s=5, token="a")
    b = TtlLock(r, keys.reaper_lock, ttl_s=5, token="b")
    assert a.acquire() and not b.acquire()
    assert a.acquire()  # ours already: renewed
    assert b.holder() == "a"
    assert 0 < r.pttl(keys.reaper_lock) <= 5000


def test_non_reentrant_acquire_refuses_even_our_own_hold(r: redis.Redis, keys: Keys) -> None:
    lock = TtlLock(r, keys.host_lock("h1"), ttl_s=5, token="t")
    assert lock.acquire(reentrant=False)
    assert not lock.acquire(reentrant=False)


def test_renew_extends_only_our_own_hold(r: redis.Redis, keys: Keys) -> None:
    a = TtlLock(r, keys.reaper_lock, ttl_s=60, token="a")
    b = TtlLock(r, keys.reaper_lock, ttl_s=60, token="b")
    assert not a.renew()  # nothing to renew: renew never takes the lock
    assert r.get(keys.reaper_lock) is None
    r.set(keys.reaper_lock, "a", px=1000)
    assert a.renew() and r.pttl(keys.reaper_lock) > 1000
    assert not b.renew()


def test_release_drops_only_our_own_hold(r: redis.Redis, keys: Keys) -> None:
    a = TtlLock(r, keys.reaper_lock, ttl_s=5, token="a")
    b = TtlLock(r, keys.reaper_lock, ttl_s=5, token="b")
    assert a.acquire()
    assert not b.release()
    assert a.holder() == "a"
    assert a.release()
    assert a.holder() is None and b.acquire()


def test_a_dead_holders_lock_expires(r: redis.Redis, keys: Keys) -> None:
    a = TtlLock(r, keys.reaper_lock, ttl_s=0.05, token="a")
    b = TtlLock(r, keys.reaper_lock, ttl_s=5, token="b")
    assert a.acquire() and not b.acquire()
    time.sleep(0.1)  # a died: its lock expires
    assert b.acquire()
    assert not a.renew() and not a.release()
    assert b.holder() == "b"


def test_shared_scripts_and_defaults(r: redis.Redis, keys: Keys) -> None:
    scripts = LockScripts(r)
    locks = [TtlLock(r, keys.host_lock(h), 5, scripts=scripts) for h in ("h1", "h2")]
    assert all(lock.acquire() for lock in locks)
    assert locks[0].token != locks[1].token  # each lock gets its own readable owner token by default
    assert holder_id().count(":") == 2
    assert (ttl_ms(0), ttl_ms(0.0004), ttl_ms(2.5)) == (1, 1, 2500)
