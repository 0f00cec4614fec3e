"""Redis faults under load, on the redis role's own rendered redis.conf, users.acl and sentinel.conf.

Three loopback "hosts" (primary, two replicas, three Sentinels, ``min-replicas-to-write 1``), the fleet's ACL users,
two real worker processes, the sandbox over HTTP and a producer with ``WAIT 1``. Each fault keeps the promises users
rely on: nothing acknowledged is lost, no CAPTCHA is paid twice, no task is solved twice, no live worker is reaped,
and the workers drain cleanly afterwards. Small loads here; ``bench/failover.py`` runs >= 1,000 tasks per fault and
reports the times.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import Heartbeat
from captcha_fleet.worker.queue import TaskQueue
from tests.failover_rig import FailoverRig, Figures
from tests.fleet_helpers import TIME_SCALE, fast_config
from tests.role_redis import RoleRedisSet
from tests.tcp_cut import CuttableLink

WORKER_USER = "worker"  # the ACL user the redis role renders for workers
# Heartbeat TTL of the failover tests: TTL + grace (2 TTLs) well past the ~3 s a failover takes here.
FAILOVER_TTL_S = 5.0


@pytest.fixture()
def redis_set() -> Iterator[RoleRedisSet]:
    with RoleRedisSet(down_after_ms=1000, failover_timeout_ms=4000) as the_set:
        yield the_set


@pytest.fixture()
def sandbox() -> Iterator[SandboxServer]:
    # ~0.3 s solves, answers kept (as CaptchaAI does), so a requeued task resumes its CAPTCHA instead of paying.
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=22, retention_s=100_000.0)) as server:
        server.update(solve_time={"default": {"median_s": 30.0, "sigma": 0.3}})
        yield server


@pytest.fixture()
def make_rig(
    redis_set: RoleRedisSet, sandbox: SandboxServer, tmp_path: Path
) -> Iterator[Callable[[float], FailoverRig]]:
    """A rig with the given heartbeat TTL (a failover here takes ~3 s, more on a loaded machine)."""
    rigs: list[FailoverRig] = []

    def make(heartbeat_ttl_s: float) -> FailoverRig:
        rigs.append(
            FailoverRig(redis_set, sandbox, tmp_path, heartbeat_ttl_s, failover_s=10.0, worker_user=WORKER_USER)
        )
        return rigs[-1]

    try:
        yield make
    finally:
        for rig in rigs:
            rig.stop()


def assert_kept_promises(figures: Figures, rig: FailoverRig) -> None:
    print(figures.row())
    texts = {name: rig.log_text(name) for name in rig.workers}
    logs = "".join(texts.values())
    # A broken promise is rare and timing-bound: say what the workers warned of, not only the counts.
    told = f"{figures}\nworkers' warnings:\n{warnings_of(texts)}"
    assert figures.acknowledged >= figures.results - figures.refused > 0, told
    assert figures.lost == 0, told
    assert figures.failed == 0, told
    assert figures.paid_twice == 0, told
    assert figures.solved_twice == 0, told
    assert figures.reaped == 0, told
    assert figures.worker_exit_codes == [0] * len(rig.workers), logs[-3000:]
    for secret in (*rig.set.users.values(), rig.set.password):
        assert secret not in logs


def warnings_of(texts: dict[str, str], most: int = 60) -> str:
    """Each worker's log lines above INFO (the last ``most``), named by worker."""
    lines = [
        f"{name}: {line}"
        for name, text in texts.items()
        for line in text.splitlines()
        if " INFO " not in line and " DEBUG " not in line
    ]
    return "\n".join(lines[-most:])


def test_kill_9_of_the_primary(make_rig: Callable[[float], FailoverRig]) -> None:
    rig = make_rig(FAILOVER_TTL_S)
    rig.start_worker("a")
    rig.start_worker("b")
    victim = rig.set.primary()
    figures = rig.run("kill -9", victim.kill, tasks=240, rate=60, fault_after=40)
    assert figures.switch_after_s is not None
    assert_kept_promises(figures, rig)


def test_sigstop_of_the_primary_past_down_after(make_rig: Callable[[float], FailoverRig]) -> None:
    """Frozen for 4 s (down-after is 1 s): a failover, then the old primary wakes as a master without replicas."""
    rig = make_rig(FAILOVER_TTL_S)
    rig.start_worker("a")
    rig.start_worker("b")
    victim = rig.set.primary()

    def freeze() -> None:
        victim.pause()
        time.sleep(4.0)
        victim.resume()

    figures = rig.run("SIGSTOP 4 s", freeze, tasks=240, rate=60, fault_after=40)
    assert figures.switch_after_s is not None
    assert_kept_promises(figures, rig)


def test_a_worker_cut_off_from_redis_for_longer_than_its_ttl_is_not_reaped(
    make_rig: Callable[[float], FailoverRig],
) -> None:
    """Worker a's link to the primary goes silent for 2.75 s, past its 2 s TTL, within TTL + grace (4 s)."""
    rig = make_rig(2.0)
    primary = rig.set.primary()
    with CuttableLink((primary.address, rig.set.port)) as link:
        url = f"redis://{WORKER_USER}:{rig.set.users[WORKER_USER]}@127.0.0.1:{link.port}/0"
        rig.start_worker("a", url)
        rig.start_worker("b")

        def cut() -> None:
            link.cut()
            time.sleep(2.75)
            link.heal()

        figures = rig.run("cut 2.75 s", cut, tasks=200, rate=50, fault_after=40, expect_switch=False)
    assert_kept_promises(figures, rig)
    assert "had been reaped" not in rig.log_text("a")


def test_the_reaper_waits_out_a_silent_workers_failover_allowance(r: redis.Redis, keys: Keys) -> None:
    """Heartbeat key expired but the last beat is recent: not dead yet. Past the allowance: dead, tasks requeued."""
    config = fast_config("redis://unused", keys.prefix, "http://127.0.0.1:1")
    silent, reaper = TaskQueue(r, config, "h:silent"), TaskQueue(r, config, "h:reaper")
    r.rpush(keys.tasks, b'{"id": "t1", "method": "base64", "params": {}}')
    assert silent.heartbeat(Heartbeat(id="h:silent"), ttl_s=0.05) is False  # first beat: newly registered
    assert silent.heartbeat(Heartbeat(id="h:silent"), ttl_s=0.05) is True
    assert len(silent.claim(1, 0.1)) == 1
    time.sleep(0.15)  # the key expired
    assert reaper.reap(lock_ttl_s=5, silent_s=5.0) == {}
    assert r.llen(keys.inflight("h:silent")) == 1
    assert reaper.reap(lock_ttl_s=5, silent_s=0.1) == {"h:silent": 1}
    assert r.llen(keys.tasks) == 1
    # Back from its silence, the worker learns it had been reaped.
    assert silent.heartbeat(Heartbeat(id="h:silent"), ttl_s=1) is False
