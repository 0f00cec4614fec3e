"""A forged heartbeat beside a real worker (issue 21): the controller process, with the local actuator, its real
worker services solving through the sandbox, and heartbeats a compromised host refreshes under ids the controller
does not manage. The real services keep running and claiming; the forged ones are never counted or steered."""

from __future__ import annotations

import json
import threading
import time

import pytest

from captcha_fleet.local_servers.polling import wait_until as wait_for
from tests.controller_fleet import Fleet

pytestmark = pytest.mark.slow
FORGED = {
    # The issue's: an idle-looking fleet beside one that claims to be saturated.
    "evil:0": {"host": "evil", "state": "running", "slots": 10, "busy": 10},
    # On the controller's own host, not one of its services: absurd numbers and errors that grow.
    "itest:99": {"host": "itest", "state": "running", "slots": 10**15, "busy": 10**15, "target": 10**15},
}


def forge(target: Fleet, stop: threading.Event) -> None:
    """Refresh the forged heartbeats (and their registration) the way a worker would, for at most 60 s; one forged
    id also claims to hold a thousand tasks in its in-flight list."""
    target.r.rpush(target.keys.inflight("evil:0"), *[json.dumps({"id": f"forged-{i}"}) for i in range(1000)])
    deadline = time.monotonic() + 60
    errors = 0
    while not stop.is_set() and time.monotonic() < deadline:
        errors += 1000
        for wid, beat in FORGED.items():
            data = {**beat, "process": "forged", "ts": time.time(), "api_errors": {"capacity": errors}}
            target.r.set(target.keys.heartbeat(wid), json.dumps(data), ex=2)
            target.r.zadd(target.keys.workers, {wid: time.time()})
        target.r.xadd(target.keys.events, {"id": "forged", "status": "success", "latency_s": "nan", "host": "itest"})
        stop.wait(0.2)


def test_a_forged_heartbeat_is_never_counted_nor_drained_in_place_of_a_real_service(fleet: Fleet) -> None:
    fleet.start_controller("c")
    assert wait_for(lambda: "itest:1" in fleet.live_workers(), 20)
    stop = threading.Event()
    forger = threading.Thread(target=forge, args=(fleet, stop), daemon=True)
    forger.start()
    try:
        forged_from = time.time() + 0.5  # every decision from here on saw the forged heartbeats (0.2 s apart)
        time.sleep(1.5)  # three evaluations with the forged ones and nothing queued: the real service is idlest
        burst_at = time.time()
        ids = fleet.submit(20)
        assert wait_for(lambda: fleet.counts()[2] == len(ids), 40), fleet.counts()  # the real ones claim and solve
        assert all(proc.poll() is None for proc in fleet.controllers)  # the controller is still up
        decisions = [d for d in fleet.decisions() if d["at"] >= forged_from]
        assert len(decisions) >= 3
    finally:
        stop.set()
        forger.join(timeout=5)
    ceiling = 17  # plan_threads 16 x 1.1 (fleet_yml)
    for d in decisions:
        steered = set(d["targets"]) | set(d["draining"]) | set(d["started"]) | set(d["stopped"])
        assert not steered & set(FORGED), d
        assert d["unknown_workers"] == sorted(FORGED), d
        s = d["inputs"]
        assert 0 <= s["busy"] <= s["slots"] <= s["services"] * ceiling, s
        assert 0 <= s["in_flight"] <= s["services"] * ceiling, s  # the forged list is not work the fleet holds
        assert d["desired_slots"] <= ceiling
        assert "itest" not in s["host_error_rates"] or s["host_error_rates"]["itest"] == 0.0, s
    assert any(d.get("untrusted_values", {}).get("event/malformed") for d in decisions)
    # Before the burst the forged ones were "busier" than the real service: it was never drained for them. (After
    # it the controller may scale out and back in, draining whichever real service is idlest: that is its job.)
    assert not any("itest:1" in d["draining"] for d in decisions if d["at"] < burst_at)
    live = fleet.live_workers()
    real = [w for wid, w in live.items() if wid not in FORGED]
    assert any(w["state"] == "running" for w in real), live
