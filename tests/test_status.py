"""``captcha-fleet status --json`` against a real fleet: controller, local worker processes, sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from captcha_fleet.local_servers.polling import wait_until as wait_for
from tests.controller_fleet import Fleet

pytestmark = pytest.mark.slow


def status(f: Fleet) -> dict[str, Any]:
    argv = [sys.executable, "-m", "captcha_fleet.apps.cli", "status", "--json", "--config", str(f.config)]
    out = subprocess.run(argv, env=f.env, capture_output=True, text=True, timeout=30, check=True)
    return dict(json.loads(out.stdout))


def test_status_json_matches_the_fleet(fleet: Fleet, sandbox: Any) -> None:
    sandbox.update(solve_time={"default": {"median_s": 40.0, "sigma": 0.2}})  # ~2 s solves
    fleet.start_controller("s")
    assert wait_for(lambda: len(fleet.live_workers()) >= 1, 20)
    ids = fleet.submit(60)
    assert wait_for(lambda: fleet.counts()[1] > 0, 20)
    # Under load: one consistent snapshot, every task in exactly one place.
    busy = status(fleet)
    assert busy["pending"] + busy["in_flight"] + busy["results"] == len(ids)
    assert busy["in_flight"] > 0
    assert busy["leader"] == fleet.leader()
    assert {s["name"] for s in busy["signals"]} == {
        "queue depth",
        "utilization",
        "P95 latency",
        "error rate",
        "balance",
    }
    # Settled (all done, scaled back in to one service): the workers and hosts are those with live heartbeats.
    assert wait_for(lambda: fleet.counts() == (0, 0, len(ids)), 60), fleet.counts()
    assert wait_for(lambda: len(fleet.live_workers()) == 1, 30)
    assert wait_for(lambda: status(fleet)["balance"] is not None, 10)
    done = status(fleet)
    live = fleet.live_workers()
    assert {w["id"] for w in done["workers"]} == set(live)
    assert done["slots"] == sum(int(b["slots"]) for b in live.values())
    (host,) = done["hosts"]
    assert host["name"] == "itest" and host["services"] == len(live) and host["reachable"] is True
    assert done["results"] == len(ids) and done["pending"] == 0 and done["in_flight"] == 0
    # the controller's own decisions, newest first (it keeps deciding while status reads, so not only the last)
    logged = fleet.decisions()
    shown = done["decisions"]
    assert shown and all(d in logged for d in shown)
    positions = [logged.index(d) for d in shown]
    assert positions == sorted(positions, reverse=True)
    assert done["balance"] == pytest.approx(sandbox.stats()["balance"], abs=0.2)
    queue = next(s for s in done["signals"] if s["name"] == "queue depth")
    assert queue["value"] == 0 and queue["verdict"] == "down"
