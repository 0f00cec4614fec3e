"""Rolling updates in a row under load on lab hosts, good and bad releases alternating (root only; issue 10).

Three lab hosts (network namespaces with their own sshd) provisioned by ``site.yml``, one worker service each;
Redis and the sandbox (1/100 of real time) on the lab bridge. A producer submits tasks at a steady rate for the
whole run (bounded in count and time). Then ``playbooks/rolling_update.yml`` runs ``--rolls`` times in a row, as
docs/operations.md runs it (``ansible-playbook -i INVENTORY playbooks/rolling_update.yml -e
worker_source_dir=...``), each time with a new release; every ``--bad-every``-th release is bad, alternately one
whose worker exits at start (the heartbeat gate fails) and one whose self-check fails (its workers heartbeat). After
each roll: every host's ``current`` link and the versions in its heartbeats, the draining flags and host locks left
in Redis. At the end: every submitted task's result.

Counted: good releases rolled back (the roll failed, or a host is not on the release afterwards), bad releases
kept (a host's ``current`` or a heartbeat on the bad release afterwards), hosts left draining, tasks failed or
without a result. This process's environment holds ``REDIS_URL`` and ``CAPTCHAAI_KEY`` as the controller host's
does; every file it and ansible-playbook write (logs, temporary files, ``~/.ansible``) is grepped for both.

    sudo .venv/bin/python bench/rolling_updates.py --rolls 20 --bad-every 4 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from labbench import BenchLab, add_lab_arguments, bench_lab, lab_unavailable, pct  # noqa: E402

from captcha_fleet.contract.keys import Keys  # noqa: E402
from lab.env import LabEnv, snapshot_source  # noqa: E402

ROLL_TIMEOUT_S = 900
BASE_VERSION = "0.9"


class Load:
    """A producer at a steady rate, bounded by ``max_tasks`` and ``max_s``; collects the ids it submitted."""

    def __init__(self, env: LabEnv, rate_per_s: float, max_tasks: int, max_s: float) -> None:
        from captcha_fleet.contract.tasks import NewTask
        from captcha_fleet.worker.producer import Producer

        self.keys = Keys(env.key_prefix)
        self.client = env.redis.client()
        self.producer = Producer(self.client, self.keys)
        self.new_task = NewTask
        self.rate = rate_per_s
        self.max_tasks = max_tasks
        self.max_s = max_s
        self.ids: list[str] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _run(self) -> None:
        batch = max(1, int(self.rate / 10))
        deadline = time.monotonic() + self.max_s
        while not self._stop.is_set() and len(self.ids) < self.max_tasks and time.monotonic() < deadline:
            tasks = [self.new_task("base64", {"body": "aGVsbG8="}) for _ in range(batch)]
            try:
                self.ids += self.producer.submit_many(tasks)
            except Exception:  # a producer error is counted, never hidden
                self.errors += 1
            self._stop.wait(0.1)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def results(self, timeout_s: float) -> list[dict[str, Any]]:
        """Wait (bounded) until every submitted task has a result; missing ones come back as ``missing``."""
        self.stop()
        deadline = time.monotonic() + timeout_s
        raw: list[Any] = []
        while True:
            raw = self.client.hmget(self.keys.results, self.ids) if self.ids else []
            if all(r is not None for r in raw) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return [json.loads(r) if r is not None else {"status": "missing"} for r in raw]


def key_suffixes(client: Any, pattern: str) -> list[str]:
    """The host names of the keys matching ``pattern`` (``...:<host>``)."""
    names = (k.decode() if isinstance(k, bytes) else str(k) for k in client.keys(pattern))
    return sorted(n.rsplit(":", 1)[-1] for n in names)


def release_of(env: LabEnv, host: str, what: str = "current") -> str:
    """The release name a host's ``current`` link (or its gated-release file) points at."""
    root = Path(next(h.root for h in env.lab.hosts if h.name == host))
    base = root / "opt" / "captcha-fleet"
    if what == "current":
        return (base / "current").resolve().name
    try:
        return Path((base / "gated-release").read_text(encoding="utf-8").strip()).name
    except OSError:
        return ""


def on_version(release: str, version: str) -> bool:
    return release.startswith(f"{version}-")


def heartbeat_versions(env: LabEnv, host: str) -> set[str]:
    return {b.version for b in env.heartbeats(host) if b.state == "running"}


def wait_heartbeats(env: LabEnv, hosts: list[str], version: str, timeout_s: float) -> dict[str, set[str]]:
    """Wait (bounded) until every host's running heartbeats report ``version`` only; return what they report."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = {h: heartbeat_versions(env, h) for h in hosts}
        if all(v == {version} for v in seen.values()) or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def run_roll(bench: BenchLab, index: int, source: Path, log_dir: Path) -> tuple[int, float, Path]:
    """``ansible-playbook rolling_update.yml`` as an operator runs it on the controller host; rc, seconds, log."""
    env = dict(os.environ)  # REDIS_URL and CAPTCHAAI_KEY included, as on the controller host
    env.update(
        {
            "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")]),
            "ANSIBLE_NOCOLOR": "1",
        }
    )
    log = log_dir / f"roll-{index:02d}.log"
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        str(bench.env.inventory),
        str(REPO_ROOT / "playbooks" / "rolling_update.yml"),
        "-e",
        f"worker_source_dir={source}",
    ]
    started = time.monotonic()
    with open(log, "wb") as out:
        try:
            rc = subprocess.run(
                argv, check=False, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=ROLL_TIMEOUT_S
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    return rc, time.monotonic() - started, log


KINDS = ["broken-start", "selfcheck-fails"]


def main() -> int:
    args = _parse_args()
    if lab_unavailable("rolling_updates"):
        return 2

    budget_s = args.max_minutes * 60
    with bench_lab(
        args.lab_name,
        args.lab_subnet,
        args.hosts,
        time_scale=0.01,
        inventory_vars={"worker_instances": ["1"]},
        keep=args.keep,
        private_wheelhouse=True,  # the 20 releases are built into the run's own wheelhouse
    ) as bench:
        env = bench.env
        client = env.redis.client()
        log_dir = bench.workdir / "rolls"
        log_dir.mkdir(parents=True, exist_ok=True)
        good_version = release_of(env, env.hosts[0]).split("-", 1)[0]
        load = Load(env, args.rate, max_tasks=int(args.rate * (budget_s + 600)), max_s=budget_s + 600).start()
        rows: list[dict[str, Any]] = []
        began = time.monotonic()
        try:
            for i in range(1, args.rolls + 1):
                if time.monotonic() - began > budget_s:
                    print(f"stopping after {i - 1} rolls: --max-minutes {args.max_minutes} reached", flush=True)
                    break
                row, row_ok = _one_roll(bench, client, i, args.bad_every, good_version, log_dir, quiet=args.json)
                if row["kind"] == "good" and row_ok:
                    good_version = row["version"]
                rows.append(row)
        finally:
            results = load.results(timeout_s=120)
            client.close()
        summary = _summary(args, rows, results, load.errors, bench)
    if args.json:
        print(json.dumps(summary))
    else:
        print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))
    return 0


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--rolls", type=int, default=20)
    parser.add_argument("--bad-every", type=int, default=4, help="every Nth release is bad (default 4)")
    parser.add_argument("--rate", type=float, default=10.0, help="tasks per second submitted (default 10)")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="stop starting rolls after this long")
    add_lab_arguments(parser)
    args = parser.parse_args()
    if not 1 <= args.hosts <= 8 or not 1 <= args.rolls <= 50 or args.bad_every < 2 or not 0 < args.rate <= 100:
        parser.error("hosts 1..8, rolls 1..50, bad-every >= 2, rate 0..100")
    return args


def _one_roll(
    bench: BenchLab, client: Any, i: int, bad_every: int, good_version: str, log_dir: Path, quiet: bool
) -> tuple[dict[str, Any], bool]:
    """Roll release ``i`` (good, or bad every ``bad_every``-th) and read where the hosts ended up: the row, and
    whether it went as expected."""
    env = bench.env
    hosts = env.hosts
    bad = i % bad_every == 0
    kind = KINDS[(i // bad_every - 1) % 2] if bad else "good"
    version = f"{BASE_VERSION}.{100 + i}"
    source = snapshot_source(
        bench.workdir / "source-next",
        version=version,
        broken=kind == "broken-start",
        selfcheck_fails=kind == "selfcheck-fails",
    )
    rc, seconds, log = run_roll(bench, i, source, log_dir)
    expected = good_version if bad else version
    beats = wait_heartbeats(env, hosts, expected, 60)
    current = {h: release_of(env, h) for h in hosts}
    draining = key_suffixes(client, f"{env.key_prefix}:draining:*")
    locks = key_suffixes(client, f"{env.key_prefix}:hostlock:*")
    if bad:
        kept = sorted(
            h
            for h in hosts
            if on_version(current[h], version) or version in beats[h] or not on_version(current[h], good_version)
        )
        row_ok = rc != 0 and not kept
    else:
        kept = []
        off = sorted(h for h in hosts if not on_version(current[h], version) or beats[h] != {version})
        row_ok = rc == 0 and not off
    row = {
        "roll": i,
        "version": version,
        "kind": kind,
        "rc": rc,
        "seconds": round(seconds, 1),
        "rolled_back_good": (not bad) and not row_ok,
        "kept_bad_on": kept,
        "draining_left": draining,
        "locks_left": locks,
        "current": {h: current[h].split("-", 1)[0] for h in hosts},
        "heartbeat_versions": {h: sorted(v) for h, v in beats.items()},
        "log": str(log.name),
    }
    if not quiet:
        print(
            f"roll {i:2d} {kind:15s} {version}: rc {rc}, {seconds:.0f} s, "
            f"{'ok' if row_ok else 'NOT AS EXPECTED'}; current {row['current']}; "
            f"draining left {draining or 'none'}",
            flush=True,
        )
    if not row_ok:
        print(f"  see {log} (kept with --keep)", flush=True)
    return row, row_ok


def _summary(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    results: list[dict[str, Any]],
    producer_errors: int,
    bench: BenchLab,
) -> dict[str, Any]:
    failed = [r for r in results if r.get("status") != "success"]
    roll_s = [r["seconds"] for r in rows if r["kind"] == "good"] or [0.0]
    bad_s = [r["seconds"] for r in rows if r["kind"] != "good"] or [0.0]
    scan = bench.final_scan()
    return {
        "hosts": args.hosts,
        "rolls": len(rows),
        "good": sum(1 for r in rows if r["kind"] == "good"),
        "bad": sum(1 for r in rows if r["kind"] != "good"),
        "good_rolled_back": sum(1 for r in rows if r["rolled_back_good"]),
        "bad_kept": sum(1 for r in rows if r["kept_bad_on"]),
        "hosts_left_draining": max((len(r["draining_left"]) for r in rows), default=0),
        "rolls_leaving_a_lock": sum(1 for r in rows if r["locks_left"]),
        "tasks_submitted": len(results),
        "tasks_failed": sum(1 for r in failed if r.get("status") != "missing"),
        "tasks_without_result": sum(1 for r in failed if r.get("status") == "missing"),
        "producer_errors": producer_errors,
        "failure_examples": [r.get("error") for r in failed[:5]],
        "good_roll_s": {"p50": round(pct(roll_s, 0.5), 1), "max": round(max(roll_s), 1)},
        "bad_roll_s": {"p50": round(pct(bad_s, 0.5), 1), "max": round(max(bad_s), 1)},
        "provision_site_yml_s": round(bench.provision_s, 1),
        "secret_scan": scan.summary(),
        "site_yml_secret_scan": bench.site_scan.summary(),
        "rows": rows,
    }


if __name__ == "__main__":
    sys.exit(main())
