"""The controller process against a real redis-server, the sandbox API and real worker processes.

Time runs 20 times faster than real: the sandbox solves in ~0.75 s, and every controller and worker timing
is scaled the same way (evaluation every 0.5 s, scale-down window 3 s, leader TTL 2 s).
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any, cast

import pytest

from captcha_fleet.local_servers.polling import wait_until as wait_for
from tests.controller_fleet import MIN_SLOTS, Fleet

pytestmark = pytest.mark.slow


def test_burst_scales_up_within_two_evaluations_and_back_down(fleet: Fleet) -> None:
    fleet.start_controller("a")
    assert wait_for(lambda: len(fleet.live_workers()) == 1 and len(fleet.decisions()) >= 2, 20)
    t0 = time.time()
    ids = fleet.submit(60)

    def after() -> list[dict[str, Any]]:
        return [d for d in fleet.decisions() if d["at"] >= t0]

    assert wait_for(lambda: len(after()) >= 2, 5)
    first_two = after()[:2]
    assert any(d["rule"] == "scale-up" and d["desired_slots"] > MIN_SLOTS for d in first_two), first_two
    assert max(d["desired_services"] for d in first_two) > 1
    assert "pending" in first_two[0]["inputs"] and first_two[0]["reason"]

    assert wait_for(lambda: fleet.counts()[2] == len(ids), 40), fleet.counts()
    assert wait_for(lambda: len(fleet.live_workers()) >= 1, 5)
    assert max(d["desired_slots"] for d in after()) > MIN_SLOTS
    # Back down after the window: the minimum, one service, and no task lost.
    assert wait_for(lambda: fleet.decisions()[-1]["desired_slots"] == MIN_SLOTS, 20)
    assert wait_for(lambda: len(fleet.live_workers()) == 1, 20), fleet.live_workers()
    pending, inflight, results = fleet.counts()
    assert (pending, inflight, results) == (0, 0, len(ids))
    raw = cast("dict[bytes, bytes]", fleet.r.hgetall(fleet.keys.results))
    stored = {k.decode(): json.loads(v) for k, v in raw.items()}
    assert set(stored) == set(ids)
    assert all(v["status"] == "success" for v in stored.values())
    assert any(d["stopped"] for d in after())  # services were stopped only once drained


def test_killing_the_leader_hands_over_to_the_standby(fleet: Fleet) -> None:
    a = fleet.start_controller("a")
    assert wait_for(lambda: (fleet.leader() or "").split(":")[1:2] == [str(a.pid)], 20)
    b = fleet.start_controller("b")
    assert wait_for(lambda: len(fleet.live_workers()) == 1, 20)
    time.sleep(1.0)  # b is up and standing by
    assert (fleet.leader() or "").split(":")[1] == str(a.pid)

    ids = fleet.submit(40)
    assert wait_for(lambda: len(fleet.live_workers()) > 1, 10)
    a.send_signal(signal.SIGKILL)  # no clean step-down: the lock must expire
    a.wait()
    killed_at = time.time()
    assert wait_for(lambda: (fleet.leader() or "").split(":")[1:2] == [str(b.pid)], 10)
    took_over = time.time() - killed_at
    assert took_over < 2.0 + 1.5  # TTL + a renewal tick
    assert wait_for(lambda: any(d["leader"].split(":")[1] == str(b.pid) for d in fleet.decisions()), 5)

    assert wait_for(lambda: fleet.counts()[2] == len(ids), 40), fleet.counts()
    # The new leader adopted the dead leader's services and scales them back in.
    assert wait_for(lambda: len(fleet.live_workers()) == 1, 25), fleet.live_workers()
    assert fleet.counts() == (0, 0, len(ids))
    state = fleet.r.hgetall(fleet.keys.controller_state)
    assert b"policy" in state and b"managed" in state


def test_zero_balance_stops_scale_up_and_tasks_stay_queued(fleet: Fleet, sandbox: Any) -> None:
    sandbox.update(balance=0.0)
    fleet.start_controller("a")
    assert wait_for(lambda: len(fleet.live_workers()) == 1, 20)
    t0 = time.time()
    ids = fleet.submit(40)
    time.sleep(4.0)  # eight evaluations
    after = [d for d in fleet.decisions() if d["at"] >= t0]
    assert len(after) >= 4
    assert all(d["desired_slots"] <= MIN_SLOTS for d in after), [d["desired_slots"] for d in after]
    blocked = [d for d in after if d["rule"] == "guard:balance-floor"]
    assert blocked and "below the $1.00 floor" in blocked[-1]["reason"]
    assert blocked[-1]["inputs"]["balance"] == 0.0
    pending, inflight, results = fleet.counts()
    assert results == 0
    assert pending + inflight == len(ids)
    assert pending >= len(ids) - MIN_SLOTS * 2  # at most the minimum's slots hold a task
    assert len(fleet.live_workers()) == 1
