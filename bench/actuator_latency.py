"""Decision -> a new worker service claiming tasks on a lab host, through the Ansible actuator (root only).

Brings up a lab (network-namespace hosts with their own sshd), a Redis and the sandbox on the lab bridge, provisions
the hosts with site.yml (no worker instance running), preloads the queue, then repeats: ``apply`` one more service
on a host and time until that service holds a claimed task (its in-flight list is non-empty), then ``apply`` it
away and wait until it is gone. Prints p50/p90/max of decision -> claiming and of the scale.yml runs.

    sudo .venv/bin/python bench/actuator_latency.py --iterations 15 [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from labbench import pct  # noqa: E402

from captcha_fleet.contract.keys import Keys  # noqa: E402
from captcha_fleet.contract.tasks import NewTask  # noqa: E402
from captcha_fleet.controller.actuators.ansible import AnsibleActuator, AnsibleActuatorConfig  # noqa: E402
from captcha_fleet.controller.hosts.state import worker_id_for  # noqa: E402
from lab.env import WORKER_SETTINGS, fresh_lab  # noqa: E402
from lab.labctl import unavailable_reason  # noqa: E402


def main() -> int:
    args = _parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"actuator_latency: {reason}", file=sys.stderr)
        return 2

    actuator: AnsibleActuator | None = None
    # Real-time solves (several seconds) so a claimed task stays in flight long enough to be seen.
    with fresh_lab(
        args.hosts, name="cbench", subnet="10.77.7.0/24", key_prefix="bench", sandbox_time_scale=1.0,
        inventory_vars={"worker_instances": [], "worker_settings": {**WORKER_SETTINGS, "drain_timeout_s": 1.0}},
        keep=args.keep,
    ) as env:  # fmt: skip
        try:
            lab = env.lab
            t0 = time.monotonic()
            site = env.run_playbook("site.yml")
            provision_s = time.monotonic() - t0
            if site.status != "successful":
                print(site.stdout[-3000:], file=sys.stderr)
                return 1
            keys = Keys(env.key_prefix)
            client = env.redis.client()
            task = NewTask("base64", {"body": "aGVsbG8="})  # each push gets its own id
            client.rpush(keys.tasks, *[task.to_json() for _ in range(2000)])
            actuator = AnsibleActuator(
                AnsibleActuatorConfig(inventory=lab.inventory_path, data_dir=lab.dir / "runner", timeout_s=60)
            )
            latencies, runs = _measure(actuator, client, keys, lab.host_names()[0], args.iterations, lab.dir)
            _report(_result(args, provision_s, latencies, runs), args)
            return 0
        finally:
            if actuator is not None:
                actuator.close()


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards (debugging)")
    return parser.parse_args()


def _measure(
    actuator: AnsibleActuator, client: Any, keys: Keys, host: str, iterations: int, lab_dir: Path
) -> tuple[list[float], list[float]]:
    """Decision -> claiming latencies, and the seconds of every scale.yml run (a start and a stop each time)."""
    latencies: list[float] = []
    runs: list[float] = []
    for i in range(iterations):
        instance = str(i % 2 + 1)
        wid = worker_id_for(host, instance)
        client.delete(keys.inflight(wid))
        start = time.monotonic()
        actuator.apply({host: frozenset({instance})})
        while client.llen(keys.inflight(wid)) == 0:
            if time.monotonic() - start > 60:
                raise RuntimeError(f"{wid} never claimed a task; see {lab_dir}")
            time.sleep(0.01)
        latencies.append(time.monotonic() - start)
        actuator.wait_idle(60)
        runs.append(actuator.runs[-1].seconds)
        actuator.apply({host: frozenset()})
        actuator.wait_idle(60)
        runs.append(actuator.runs[-1].seconds)
    return latencies, runs


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 3),
        "p90": round(pct(values, 0.9), 3),
        "max": round(max(values), 3),
    }


def _result(args: argparse.Namespace, provision_s: float, latencies: list[float], runs: list[float]) -> dict[str, Any]:
    return {
        "hosts": args.hosts,
        "iterations": args.iterations,
        "provision_site_yml_s": round(provision_s, 1),
        "decision_to_claim_s": _spread(latencies),
        "scale_run_s": _spread(runs),
    }


def _report(result: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(result))
        return
    print(f"site.yml on {args.hosts} bare lab hosts: {result['provision_site_yml_s']} s")
    d, r = result["decision_to_claim_s"], result["scale_run_s"]
    print(f"decision -> claiming ({args.iterations} starts): p50 {d['p50']} s, p90 {d['p90']} s, max {d['max']} s")
    print(f"scale.yml run (start or stop): p50 {r['p50']} s, p90 {r['p90']} s, max {r['max']} s")


if __name__ == "__main__":
    sys.exit(main())
