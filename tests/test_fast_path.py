"""Scale-up on the fast path: a burst up to the plan's threads is served by the running worker process, its
thread target raised within seconds of the jump (the loop's queue check), with no new process started.

Real redis-server, the sandbox API over HTTP, the controller and its worker as real processes; time 20x
compressed as in test_controller_integration.py, but with the default ``slots_per_service`` (one service
holds the whole plan) and an evaluation tick long enough that only the queue check can explain a quick
reaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.keys import Keys
from captcha_fleet.local_servers.polling import wait_until
from tests.controller_fleet import TIME_SCALE, Fleet
from tests.fleet_helpers import read_results

pytestmark = pytest.mark.slow
PLAN = 40
INTERVAL_S = 6.0  # the evaluation tick; the queue check runs every QUICK_S
QUICK_S = 0.2


@pytest.fixture()
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=5, threads=PLAN)) as server:
        yield server


@pytest.fixture()
def fleet(tmp_path: Path, redis_url: str, sandbox: SandboxServer, keys: Keys) -> Iterator[Fleet]:
    f = Fleet(tmp_path, redis_url, sandbox.url, keys)
    data: dict[str, Any] = yaml.safe_load(f.config.read_text(encoding="utf-8"))
    controller = data["controller"]
    del controller["slots_per_service"]  # the default: one service holds the plan
    controller.update(
        interval_s=INTERVAL_S, quick_check_s=QUICK_S, leader_ttl_s=20.0, plan_threads=PLAN, scale_down_window_s=30.0
    )
    f.config.write_text(yaml.safe_dump(data), encoding="utf-8")
    try:
        yield f
    finally:
        f.cleanup()


def test_a_burst_to_the_plans_size_is_served_with_no_new_process(fleet: Fleet, sandbox: SandboxServer) -> None:
    fleet.start_controller("a")
    assert wait_until(lambda: len(fleet.live_workers()) == 1 and len(fleet.decisions()) >= 1, 30)
    (worker,) = fleet.live_workers()
    last_tick = fleet.decisions()[-1]["at"]
    time.sleep(max(0.0, last_tick + 1.0 - time.time()))  # well before the next tick
    t0 = time.time()
    ids = fleet.submit(PLAN)

    def since() -> list[dict[str, Any]]:
        return [d for d in fleet.decisions() if d["at"] >= t0]

    assert wait_until(lambda: any(d["rule"] == "scale-up" for d in since()), 10), since()
    up = next(d for d in since() if d["rule"] == "scale-up")
    assert up["at"] - t0 < INTERVAL_S / 2, up  # the queue check, not the tick
    assert up["targets"].get(worker, 0) == up["desired_slots"] > 2  # grown inside the running service

    assert wait_until(lambda: fleet.counts()[2] == len(ids), 40), fleet.counts()
    assert set(fleet.live_workers()) == {worker}  # no other process ever came up
    assert all(not d["started"] for d in since())
    assert fleet.counts() == (0, 0, len(ids))
    results = read_results(fleet.r, fleet.keys)
    assert all(results[i]["status"] == "success" for i in ids)  # none failed on the plan's limit
