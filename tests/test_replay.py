"""``captcha-fleet replay`` as a user runs it: a short trace fed to the real fleet (private redis-server, the
sandbox API, the controller and its worker processes), the same JSON fields as ``sim`` plus the provider's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.sim.engine import simulate
from captcha_fleet.controller.sim.traces import Trace

pytestmark = pytest.mark.slow
PLAN = 30


def test_replay_prints_the_sim_fields_and_the_providers_side(tmp_path: Path) -> None:
    arrivals = [0] * 5 + [4] * 25 + [0] * 10  # a burst of 100 tasks in 25 trace seconds
    csv = tmp_path / "burst.csv"
    csv.write_text("t,arrivals\n" + "".join(f"{t},{n}\n" for t, n in enumerate(arrivals)), encoding="utf-8")
    argv = [sys.executable, "-m", "captcha_fleet.apps.cli", "replay", "--trace", str(csv), "--time-scale", "0.05"]
    argv += ["--plan-threads", str(PLAN), "--out", str(tmp_path / "run"), "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])

    settings = ControllerSettings(plan_threads=PLAN)
    sim = simulate(Trace("burst", tuple(arrivals)), None, settings).to_dict()
    assert set(sim) - {"series", "decisions"} <= set(out)  # every field sim prints
    assert out["tasks"] == out["completed"] == sum(arrivals) and out["lost"] == 0 and out["failed"] == 0
    assert out["trace"] == "burst" and out["policy"] == "queue-model"
    # Figures in trace seconds: a 15 s median solve is not 0.75 s here.
    assert 12.0 < out["p50_latency_s"] <= out["p95_latency_s"] < 200.0
    assert out["worker_seconds"] >= out["oracle_worker_seconds"] > 100 * 12.0
    # The provider's side, from the sandbox's counters.
    assert 1 <= out["provider_peak"] <= PLAN
    assert out["provider_mean_while_waiting"] is None or 0 < out["provider_mean_while_waiting"] <= PLAN
    assert 1.0 <= out["http_requests_per_task"] < 3.0
    assert out["provider_in_flight_series"] and max(n for _, n in out["provider_in_flight_series"]) <= PLAN
    assert (tmp_path / "run" / "result.json").exists()
    # The simulator beside it ran at five phases of the evaluation grid; its figure is the median phase's.
    phases = out["sim"]["p95_by_eval_phase"]
    assert list(phases) == ["0", "2", "4", "6", "8"]
    assert out["sim"]["p95_latency_s"] == pytest.approx(sorted(phases.values())[2], abs=0.01)


def test_replay_rejects_a_bad_window_clearly(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "captcha_fleet.apps.cli", "replay", "--trace", "builtin:short", "--window", "500:100"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "--window 500:100" in done.stderr


def test_a_running_fleets_settings_read_back_in_trace_seconds() -> None:
    from captcha_fleet.apps.replay.config import in_trace_seconds, replay_config
    from captcha_fleet.controller.settings import settings_from_config

    original = ControllerSettings(p95_target_s=45.0, interval_s=5.0, plan_threads=PLAN)
    config = replay_config("redis://127.0.0.1:1/0", "http://127.0.0.1:1", 0.05, original)
    running = settings_from_config(config)  # what the fleet's controller runs with, in real seconds
    assert running.p95_target_s == pytest.approx(2.25) and running.interval_s == pytest.approx(0.25)
    back = in_trace_seconds(running, 0.05)
    assert back.p95_target_s == pytest.approx(45.0) and back.interval_s == pytest.approx(5.0)
    assert back.plan_threads == PLAN and back.slots_per_service == original.slots_per_service


def test_the_provider_while_plan_bound_counts_only_a_fleet_at_the_plan() -> None:
    from captcha_fleet.apps.replay.measure import Sample, integrate

    samples = [
        Sample(0.0, 50, 20, 1, 20),  # tasks wait on a fleet smaller than the plan: the controller's choice
        Sample(10.0, 50, 44, 1, 38),  # tasks wait, the fleet holds the plan: the worker's share
        Sample(20.0, 0, 44, 1, 30),  # nothing waits
        Sample(30.0, 0, 44, 1, 30),
    ]
    got = integrate(samples, plan_threads=40)
    assert got["provider_mean_while_waiting"] == pytest.approx(29.0)
    assert got["provider_mean_while_plan_bound"] == pytest.approx(38.0)
    assert got["provider_plan_bound_s"] == pytest.approx(10.0)
    assert integrate(samples)["provider_mean_while_plan_bound"] is None


def test_a_replays_controller_settings_still_parse_once_scaled() -> None:
    # release_window_s is in trace seconds like the other windows: unscaled it would outlast them 20 times.
    from captcha_fleet.apps.replay.config import replay_config
    from captcha_fleet.controller.settings import controller_settings

    config = replay_config("redis://127.0.0.1:1/0", "http://127.0.0.1:1", 0.05, ControllerSettings())
    parsed = controller_settings(config.section("controller"))
    assert parsed.release_window_s == pytest.approx(ControllerSettings().release_window_s * 0.05)
    assert parsed.release_window_s <= parsed.scale_down_window_s
