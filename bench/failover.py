"""Benchmark: Redis faults under >= 1,000 tasks each, on the redis role's own rendered configs.

Each fault gets a fresh deployment: three loopback "hosts" (127.0.0.2-4) running Redis and Sentinel from
``redis.conf.j2``, ``users.acl.j2``, ``replication.conf.j2`` and ``sentinel.conf.j2`` (``min-replicas-to-write 1``,
Sentinel ``down-after-milliseconds`` 5000 as the role's default), two real worker processes with the fleet's default
heartbeat TTL (10 s) and ``redis.failover_s`` (30 s), the sandbox API, and a producer with ``WAIT 1``
(``tests/failover_rig.py``). Faults:

- ``kill``: kill -9 of the primary;
- ``stop10`` / ``stop30``: SIGSTOP of the primary for 10 s / 30 s, then SIGCONT (it wakes as a master without
  replicas, refuses writes with NOREPLICAS, and Sentinel demotes it);
- ``cut15``: worker ``a``'s link to the primary silent for 15 s (past its 10 s TTL, within the reaper's 2 TTLs);
- ``cut50``: the same for 50 s, past 2 TTLs: ``a`` is reaped and its tasks go to ``b``.

Figures per fault: lost, paid twice (sandbox submits minus results), solved twice (results written twice),
duplicate answers (a worker's answer that found its result written: a retried write, a reaped worker's), live
workers reaped, seconds from the fault to Sentinel's ``+switch-master`` and to the first
result written after it (a claim on the new primary plus a ~0.3 s solve).

Usage: ``.venv/bin/python bench/failover.py [--faults kill,stop10,stop30,cut15,cut50] [--tasks 1000] [--json]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import REPO, emit_table, machine

sys.path.insert(0, str(REPO))  # the role rig lives beside the tests that use it

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from tests.failover_rig import FailoverRig, Figures
from tests.role_redis import RoleRedisSet
from tests.tcp_cut import CuttableLink

TIME_SCALE = 0.01
FAULTS = ("kill", "stop10", "stop30", "cut15", "cut50")


def held(start: Callable[[], None], end: Callable[[], None], seconds: float) -> Callable[[], None]:
    """A fault that lasts ``seconds``."""

    def fault() -> None:
        start()
        time.sleep(seconds)
        end()

    return fault


def run_fault(name: str, args: argparse.Namespace) -> Figures:
    """One fresh deployment, one fault under load."""
    with (
        RoleRedisSet(down_after_ms=args.down_after_ms, failover_timeout_ms=args.failover_timeout_ms) as redis_set,
        SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=22, retention_s=100_000.0)) as sandbox,
        tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp,
    ):
        sandbox.update(solve_time={"default": {"median_s": 30.0, "sigma": 0.3}})
        rig = FailoverRig(redis_set, sandbox, Path(tmp), heartbeat_ttl_s=args.heartbeat_ttl_s, failover_s=30.0)
        try:
            primary = redis_set.primary()
            if name.startswith("cut"):
                with CuttableLink((primary.address, redis_set.port)) as link:
                    user = rig.worker_user
                    rig.start_worker("a", f"redis://{user}:{redis_set.users[user]}@127.0.0.1:{link.port}/0")
                    rig.start_worker("b")
                    fault = held(link.cut, link.heal, float(name[3:]))
                    return rig.run(name, fault, args.tasks, args.rate, args.tasks // 5, expect_switch=False)
            rig.start_worker("a")
            rig.start_worker("b")
            fault = primary.kill if name == "kill" else held(primary.pause, primary.resume, float(name[4:]))
            return rig.run(name, fault, args.tasks, args.rate, args.tasks // 5)
        finally:
            rig.stop()


def main(argv: list[str] | None = None) -> int:
    """Run each fault once; print the figures."""
    parser = argparse.ArgumentParser(description="Redis faults under load: lost, paid twice, solved twice, times.")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=40.0, help="tasks per second")
    parser.add_argument("--down-after-ms", type=int, default=5000, help="Sentinel down-after-milliseconds")
    parser.add_argument("--failover-timeout-ms", type=int, default=10000, help="Sentinel failover-timeout")
    parser.add_argument("--heartbeat-ttl-s", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(unknown)}")
    info = machine()
    rows = [run_fault(name, args).row() for name in faults]
    payload: dict[str, Any] = {"machine": info, "settings": vars(args), "faults": rows}
    headers = ["fault", "acknowledged", "refused", "results", "lost", "paid twice", "solved twice",
               "duplicate answers", "reaped", "switch after (s)", "first result after (s)"]  # fmt: skip
    keys = ["fault", "acknowledged", "refused", "results", "lost", "paid_twice", "solved_twice",
            "duplicate_answers", "reaped", "switch_after_s", "first_result_after_s"]  # fmt: skip
    title = (
        f"{args.tasks} tasks per fault at {args.rate:g}/s, 2 workers (heartbeat TTL {args.heartbeat_ttl_s:g} s, "
        f"redis.failover_s 30), the redis role's configs on 3 loopback hosts (down-after {args.down_after_ms} ms, "
        f"failover-timeout {args.failover_timeout_ms} ms, min-replicas-to-write 1), WAIT 1"
    )
    table = [["-" if row[k] is None else row[k] for k in keys] for row in rows]
    emit_table(args.json, payload, title, headers, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
