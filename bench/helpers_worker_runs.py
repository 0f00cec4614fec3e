"""What the worker benchmarks (``worker_burst``, ``worker_inflight``, ``worker_overhead``) share: their common
flags, the poll-setting sweep, the read-out once a run's results are in, and the table they print."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import redis
from common import WorkerProcess, emit_table, read_results

from captcha_fleet.apps.sandbox import SandboxServer
from captcha_fleet.contract.keys import Keys


def bench_parser(description: str, quick_help: str, time_scale: float) -> argparse.ArgumentParser:
    """The parser with ``--quick``, ``--json`` and ``--time-scale`` (wall seconds per real second, the
    benchmark's default): each benchmark adds its own flags."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--time-scale", type=float, default=time_scale, help="wall seconds per real second")
    return parser


def poll_pairs(text: str) -> list[tuple[float, float]]:
    """``"5:15,2:10"`` -> ``[(5.0, 15.0), (2.0, 10.0)]``: the (poll interval, first poll) settings to sweep."""
    pairs: list[tuple[float, float]] = []
    for item in text.split(","):
        if item:
            poll_s, _, first_s = item.partition(":")
            pairs.append((float(poll_s), float(first_s)))
    return pairs


@dataclass(frozen=True)
class Readout:
    """What a run left behind: the worker's last heartbeat, every result, the sandbox's counters."""

    heartbeat: dict[str, Any]
    results: dict[str, dict[str, Any]]
    stats: dict[str, Any]


def read_out(
    client: redis.Redis, keys: Keys, worker: WorkerProcess, sandbox: SandboxServer, count: int, done: bool
) -> Readout:
    """The run's :class:`Readout`; a run whose ``count`` results did not all arrive (not ``done``) raises,
    saying how many did and what the worker logged."""
    heartbeat = worker.heartbeat(client)
    if not done:
        raise RuntimeError(f"only {client.hlen(keys.results)} of {count} results; log:\n{worker.log_text()}")
    return Readout(heartbeat, read_results(client, keys), dict(sandbox.stats()))


def emit_rows(
    args: argparse.Namespace,
    machine: dict[str, Any],
    rows: list[dict[str, Any]],
    title: str,
    headers: list[str],
    table: list[list[str]],
) -> int:
    """Print the table (or, with ``--json``, the machine, the settings and every row); exit code 0."""
    emit_table(args.json, {"machine": machine, "settings": vars(args), "rows": rows}, title, headers, table)
    return 0
