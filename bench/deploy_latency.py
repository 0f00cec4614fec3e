"""Decision -> new worker services claiming tasks, on 1, 3 and 8 lab hosts at once (root only; issue 10).

The actuator is built as the deployed controller builds it (``controller/cli.py``): the ``ansible_actuator``
section the controller role writes (project dir, roles path, ansible.cfg, inventory, runner data dir) read by
``actuator_config_from_section``, ``replace_failed: false``, and the per-host Redis lock shared with the
playbooks; real ansible-runner, ``scale.yml`` over SSH to the lab hosts (network namespaces with their own sshd).
This process's environment holds ``REDIS_URL`` and ``CAPTCHAAI_KEY`` as the controller's does, and every runner
data dir is grepped for both before it is removed (as is everything else it wrote, at the end).

The lab gets the largest host count, ``site.yml`` provisions it with no worker instance, and the queue is
preloaded (real-time solves, so a claimed task stays in flight). Then, for each host count N and round: one
decision (``apply``) starts one new service on each of the first N hosts at once; each service's latency is the
time from the decision until its in-flight list in Redis is non-empty; then the services are applied away again.

    sudo .venv/bin/python bench/deploy_latency.py --counts 1,3,8 --rounds 5 [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from host_cpu import CpuWatch  # noqa: E402
from labbench import BenchLab, add_lab_arguments, bench_lab, lab_unavailable, pct  # noqa: E402

from captcha_fleet.contract.keys import Keys  # noqa: E402
from captcha_fleet.contract.tasks import NewTask  # noqa: E402
from captcha_fleet.controller.actuators.ansible import AnsibleActuator, actuator_config_from_section  # noqa: E402
from captcha_fleet.controller.hosts.lock import RedisHostLock  # noqa: E402
from captcha_fleet.controller.hosts.state import worker_id_for  # noqa: E402
from lab.env import WORKER_SETTINGS  # noqa: E402

CLAIM_TIMEOUT_S = 90.0
PRELOAD = 3000
TASK = NewTask("base64", {"body": "aGVsbG8="})  # each push gets its own id


def stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 3),
        "p90": round(pct(values, 0.9), 3),
        "max": round(max(values), 3),
    }


@dataclass
class _Series:
    """What one host count's decisions measured, round after round."""

    each: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)
    to_run: list[float] = field(default_factory=list)  # decision -> the scale run starts (host lock, runner set-up)
    to_beat: list[float] = field(default_factory=list)  # decision -> the new service's first heartbeat

    def figures(self) -> dict[str, Any]:
        return {
            "decision_to_claim_s": stats(self.each),
            "decision_to_last_host_s": stats(self.last),
            "start_run_s": stats(self.runs),
            "decision_to_run_start_s": stats(self.to_run),
            "decision_to_first_heartbeat_s": stats(self.to_beat),
        }


def main() -> int:
    args, counts = _parse_args()
    if lab_unavailable("deploy_latency"):
        return 2

    worker_settings = {**WORKER_SETTINGS, "drain_timeout_s": 1.0}
    with bench_lab(
        args.lab_name,
        args.lab_subnet,
        counts[-1],
        time_scale=1.0,  # real-time solves: a claimed task stays in flight for seconds
        inventory_vars={"worker_instances": [], "worker_settings": worker_settings},
        keep=args.keep,
    ) as bench:
        env = bench.env
        keys = Keys(env.key_prefix)
        client = env.redis.client()
        client.rpush(keys.tasks, *[TASK.to_json() for _ in range(PRELOAD)])
        actuator = _actuator(bench, client, keys)
        hosts = env.hosts
        per_count: dict[int, dict[str, Any]] = {}
        try:
            for count in counts:
                per_count[count] = _measure_count(
                    actuator, client, keys, hosts[:count], count, args.rounds, env.lab.dir
                )
                if not args.json:
                    _print_count(count, args.rounds, per_count[count])
        finally:
            actuator.close()
            client.close()
        scan = bench.final_scan()
        result: dict[str, Any] = {
            "hosts_provisioned": counts[-1],
            "rounds": args.rounds,
            "provision_site_yml_s": round(bench.provision_s, 1),
            "by_host_count": per_count,
            "secret_scan": scan.summary(),
            "site_yml_secret_scan": bench.site_scan.summary(),
        }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"site.yml on {counts[-1]} bare lab hosts: {result['provision_site_yml_s']} s")
        print(f"controller-host files grepped: {scan.files} ({scan.bytes} bytes); with a secret: {scan.hits or 'none'}")
        print(f"site.yml runner dir: with a secret: {bench.site_scan.hits or 'none'}")
    return 0


def _parse_args() -> tuple[argparse.Namespace, list[int]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--counts", default="1,3,8", help="host counts, comma-separated (default 1,3,8)")
    parser.add_argument("--rounds", type=int, default=5, help="decisions per host count (default 5)")
    add_lab_arguments(parser)
    args = parser.parse_args()
    counts = sorted({int(c) for c in args.counts.split(",")})
    if not counts or counts[0] < 1 or counts[-1] > 20 or not 1 <= args.rounds <= 50:
        parser.error("host counts 1..20, rounds 1..50")
    return args, counts


def _actuator(bench: BenchLab, client: Any, keys: Keys) -> AnsibleActuator:
    """The actuator as the deployed controller builds it, its runner dirs grepped for secrets."""
    # The section controller.yml gets from the controller role (roles/controller/templates/fleet.yml.j2),
    # with this checkout as the project dir.
    section: dict[str, Any] = {
        "project_dir": str(REPO_ROOT / "playbooks"),
        "roles_path": str(REPO_ROOT / "roles"),
        "ansible_cfg": str(REPO_ROOT / "ansible.cfg"),
        "inventory": str(bench.env.inventory),
        "data_dir": str(bench.workdir / "runner"),
        "replace_failed": False,  # as controller/cli.py sets it
    }
    return AnsibleActuator(
        actuator_config_from_section(section),
        host_lock=RedisHostLock(client, keys),
        inspect_artifacts=bench.inspect,
    )


def _measure_count(
    actuator: AnsibleActuator, client: Any, keys: Keys, chosen: list[str], count: int, rounds: int, lab_dir: Path
) -> dict[str, Any]:
    """``rounds`` decisions that each start one new service on every chosen host, and stop them again."""
    series = _Series()
    watch = CpuWatch()
    for i in range(rounds):
        _one_decision(actuator, client, keys, chosen, count, str(i % 2 + 1), lab_dir, series)
    return {**series.figures(), "host_cpu": str(watch.read())}


def _one_decision(
    actuator: AnsibleActuator,
    client: Any,
    keys: Keys,
    chosen: list[str],
    count: int,
    instance: str,
    lab_dir: Path,
    series: _Series,
) -> None:
    """Start ``instance`` on every chosen host at once, time the claims and heartbeats, then apply it away."""
    waiting = {h: keys.inflight(worker_id_for(h, instance)) for h in chosen}
    client.delete(*waiting.values())
    if client.llen(keys.tasks) < 20 * count:
        client.rpush(keys.tasks, *[TASK.to_json() for _ in range(500)])
    beats = {h: keys.heartbeat(worker_id_for(h, instance)) for h in chosen}
    client.delete(*beats.values())  # a stopped predecessor's (it stopped two rounds ago)
    start_wall = time.time()
    start = time.monotonic()
    actuator.apply({h: frozenset({instance}) for h in chosen})
    seen, beat = _wait_for_claims(client, waiting, beats, start, lab_dir)
    series.each.extend(seen.values())
    series.last.append(max(seen.values()))
    if not actuator.wait_idle(120):
        raise RuntimeError("the start run did not finish in 120 s")
    series.runs.append(actuator.runs[-1].seconds)
    series.to_run.append(actuator.runs[-1].started - start_wall)
    series.to_beat.extend(beat.get(h, seen[h]) for h in seen)
    actuator.apply({})
    if not actuator.wait_idle(120):
        raise RuntimeError("the stop run did not finish in 120 s")
    failed = {**actuator.runs[-2].failed, **actuator.runs[-1].failed}
    if failed:
        raise RuntimeError(f"hosts failed: {failed}")


def _wait_for_claims(
    client: Any, waiting: dict[str, str], beats: dict[str, str], start: float, lab_dir: Path
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds from the decision until each host's new service claimed a task, and until its first heartbeat."""
    seen: dict[str, float] = {}
    beat: dict[str, float] = {}
    while len(seen) < len(waiting):
        now = time.monotonic()
        if now - start > CLAIM_TIMEOUT_S:
            missing = sorted(set(waiting) - set(seen))
            raise RuntimeError(f"never claimed a task: {missing} (see {lab_dir})")
        pipe = client.pipeline(transaction=False)
        todo = [h for h in waiting if h not in seen]
        for h in todo:
            pipe.llen(waiting[h])
        for h in todo:
            pipe.exists(beats[h])
        answers = pipe.execute()
        for h, n, b in zip(todo, answers[: len(todo)], answers[len(todo) :], strict=True):
            if b and h not in beat:
                beat[h] = now - start
            if n:
                seen[h] = now - start
        time.sleep(0.01)
    return seen, beat


def _print_count(count: int, rounds: int, figures: dict[str, Any]) -> None:
    d, la = figures["decision_to_claim_s"], figures["decision_to_last_host_s"]
    print(
        f"{count} host(s), {rounds} decisions: claim p50 {d['p50']} s p90 {d['p90']} s "
        f"max {d['max']} s; all hosts claiming p50 {la['p50']} s p90 {la['p90']} s; "
        f"run starts p50 {figures['decision_to_run_start_s']['p50']} s, "
        f"first heartbeat p50 {figures['decision_to_first_heartbeat_s']['p50']} s, "
        f"start run p50 {figures['start_run_s']['p50']} s; host CPU {figures['host_cpu']}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
