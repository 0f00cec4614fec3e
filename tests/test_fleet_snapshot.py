"""The one fleet reader (captcha_fleet.contract.fleet_snapshot) on a real redis-server, and ``status`` judged by it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from captcha_fleet.apps.status.fleet_state import read_fleet_state
from captcha_fleet.contract.fleet_snapshot import read_snapshot
from captcha_fleet.contract.keys import Keys
from captcha_fleet.controller.settings import ControllerSettings


def register(r: redis.Redis, keys: Keys, worker_id: str, beat: bytes | None, held: int = 0) -> None:
    r.zadd(keys.workers, {worker_id: time.time()})
    if beat is not None:
        r.set(keys.heartbeat(worker_id), beat, ex=60)
    for n in range(held):
        r.rpush(keys.inflight(worker_id), f"task-{worker_id}-{n}")


def beat(**fields: Any) -> bytes:
    return json.dumps({"state": "running", "slots": 4, "busy": 1, "ts": time.time(), **fields}).encode()


def test_live_dead_and_malformed_workers_each_counted_once(r: redis.Redis, keys: Keys) -> None:
    r.rpush(keys.tasks, "a", "b", "c")
    register(r, keys, "h1:1", beat(host="h1", instance="1"), held=2)
    register(r, keys, "h1:2", None, held=1)  # heartbeat expired, its tasks not yet reaped
    register(r, keys, "h2:1", b"{not json", held=1)
    register(r, keys, "h2:2", beat(busy="three"))  # JSON, but a field of the wrong type
    snap = read_snapshot(r, keys)
    assert snap.pending == 3
    assert snap.in_flight == 4  # every registered worker's list: neither queued nor finished
    assert list(snap.workers) == ["h1:1"] and snap.workers["h1:1"].in_flight == 2
    assert snap.dead == ["h1:2"]
    assert sorted(snap.malformed) == ["h2:1", "h2:2"]


def test_one_host_and_the_callers_own_commands_in_the_same_transaction(r: redis.Redis, keys: Keys) -> None:
    register(r, keys, "h1:1", beat())  # no host or instance in the record: taken from the worker id
    register(r, keys, "h10:1", beat(host="h10"))
    r.set(keys.completed_total, 7)
    snap = read_snapshot(r, keys, host="h1", extra=lambda pipe: pipe.get(keys.completed_total))
    assert list(snap.workers) == ["h1:1"]
    worker = snap.workers["h1:1"]
    assert (worker.host, worker.beat.instance, worker.state, worker.busy) == ("h1", "1", "running", 1)
    assert snap.extra == [b"7"]


def test_status_lists_an_unreadable_heartbeat_instead_of_failing(r: redis.Redis, keys: Keys) -> None:
    register(r, keys, "h1:1", beat(host="h1"))
    register(r, keys, "h1:2", b"[]")
    state = read_fleet_state(r, keys)
    assert [w.id for w in state.workers] == ["h1:1"]
    assert state.malformed_workers == ["h1:2"]
    assert state.to_dict()["malformed_workers"] == ["h1:2"]


def test_status_judges_the_signals_by_the_controllers_settings(r: redis.Redis, keys: Keys) -> None:
    r.rpush(keys.tasks, *[f"t{i}" for i in range(30)])
    default = {s.name: s for s in read_fleet_state(r, keys).signals}
    assert default["queue depth"].up_when == f"> {ControllerSettings().queue_up}"
    assert default["queue depth"].verdict == "up"  # 30 > 20
    raised = {s.name: s for s in read_fleet_state(r, keys, settings=ControllerSettings(queue_up=50)).signals}
    assert raised["queue depth"].up_when == "> 50" and raised["queue depth"].verdict == "ok"


def test_status_cli_reads_the_thresholds_from_the_controller_section(
    tmp_path: Path, redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    r.rpush(keys.tasks, *[f"t{i}" for i in range(30)])
    config = tmp_path / "fleet.yml"
    config.write_text(f"key_prefix: {keys.prefix}\ncontroller:\n  queue_up: 40\n  queue_down: 10\n", encoding="utf-8")
    argv = [sys.executable, "-m", "captcha_fleet.apps.cli", "status", "--json", "--config", str(config)]
    out = subprocess.run(argv, env={"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}, capture_output=True,
                         text=True, timeout=30, check=True)  # fmt: skip
    queue = next(s for s in json.loads(out.stdout)["signals"] if s["name"] == "queue depth")
    assert (queue["up_when"], queue["down_when"], queue["verdict"]) == ("> 40", "< 10", "ok")
