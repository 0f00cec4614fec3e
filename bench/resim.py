"""Live replays already run, each beside the simulator as it is now: when only the simulator changed, its live runs
stand, and the comparison need not cost another 40 minutes of replays.

Reads the ``result.json`` that ``captcha-fleet replay`` leaves under ``--out`` (``bench/provider_profiles.py --live``
writes them under run/provider-profiles/TRACE/PROFILE/), runs the simulator on the same trace window, provider
profile and seed with the default controller settings, as those replays run (a result.json does not record a
``--config``, so a replay run with one is not for this script), through
``captcha_fleet.apps.replay.cli.simulated_beside`` at every phase, and prints one table row per result.

    .venv/bin/python bench/resim.py run/provider-profiles/*/*/result.json
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from provider_profiles import within_line  # bench/, the script's directory

from captcha_fleet.apps.replay.cli import local_startup_s, simulated_beside, window_of
from captcha_fleet.contract.provider_profiles import provider_profile
from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.sim.traces import resolve

TRACE_NAME = re.compile(r"^(?P<name>[\w-]+)(?:\[(?P<start>\d+):(?P<end>\d+)\])?$")


def beside_now(live: dict[str, Any]) -> dict[str, Any]:
    """The simulator's figures for the trace, profile, seed and time scale one local replay ran."""
    match = TRACE_NAME.match(str(live["trace"]))
    if match is None:
        raise SystemExit(f"not a built-in trace (window): {live['trace']!r}")
    window = f"{match['start']}:{match['end']}" if match["start"] else None
    trace = window_of(resolve(f"builtin:{match['name']}", int(live["seed"])), window)
    settings = replace(ControllerSettings(), service_startup_s=local_startup_s(float(live["time_scale"])))
    return simulated_beside(trace, settings, provider_profile(str(live["provider"])), int(live["seed"]))


def row(live: dict[str, Any], sim: dict[str, Any]) -> str:
    """One markdown row: live beside the simulator's median phase, every phase's P95 in brackets."""
    ratio = live["p95_latency_s"] / sim["p95_latency_s"]
    phases = ", ".join(f"{v:.1f}" for v in sim["p95_by_eval_phase"].values())
    return (
        f"| {live['trace']} | {live['provider']} | {live['p95_latency_s']:.1f} | {sim['p95_latency_s']:.1f} ({phases}) "
        f"| {ratio:.3f} | {'yes' if within_line(ratio) else 'NO'} | {live['worker_seconds']:,.0f} "
        f"| {sim['worker_seconds']:,.0f} | {live['http_requests_per_task']:.2f} | {live['lost']} |"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="result.json files of local replays")
    args = p.parse_args()
    print(
        "| trace | provider | live P95 s | sim P95 s (phases) | live/sim | within 15 % | live slot-s | sim slot-s "
        "| req/task | lost |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path in args.results:
        live = json.loads(path.read_text(encoding="utf-8"))
        print(row(live, beside_now(live)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
