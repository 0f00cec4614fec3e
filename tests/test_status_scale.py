"""``status`` with 10,000 registry entries (issue 21: forged workers made it print 952 KB): every entry is counted,
one page is listed, the unmanaged ones are summarised, and ``--json`` stays one machine-readable object."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from captcha_fleet.apps.cli import main
from captcha_fleet.apps.status.fleet_state import SUMMARY_HOSTS, read_fleet_state
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import Heartbeat

FORGED, DEAD, UNREADABLE, MANAGED = 10_000, 300, 200, 3


def flood(r: redis.Redis, keys: Keys) -> None:
    """Three managed workers, 10,000 forged ones (each on its own host, some with markup in their id and an odd
    state), dead and unreadable entries: what one host holding the workers' credentials can write."""
    now = time.time()
    pipe = r.pipeline(transaction=False)
    for i in range(1, MANAGED + 1):
        beat = Heartbeat(id=f"real:{i}", host="real", instance=str(i), ts=now, slots=5, busy=1, version="1.0")
        pipe.set(keys.heartbeat(f"real:{i}"), beat.to_json())
        pipe.zadd(keys.workers, {f"real:{i}": now})
    for i in range(FORGED):
        wid = f"[red]x{i}:1" if i % 1000 == 0 else f"forged-{i}:1"
        beat = Heartbeat(id=wid, ts=now, slots=10, busy=10, state=f"odd-{i % 50}" if i % 2 else "running")
        pipe.set(keys.heartbeat(wid), beat.to_json())
        pipe.zadd(keys.workers, {wid: now})
    for i in range(DEAD):
        pipe.zadd(keys.workers, {f"gone-{i}:1": now})
    for i in range(UNREADABLE):
        pipe.set(keys.heartbeat(f"junk-{i}:1"), "not json")
        pipe.zadd(keys.workers, {f"junk-{i}:1": now})
    pipe.hset(keys.controller_state, "managed", json.dumps({"real": ["1", "2", "3"]}))
    pipe.execute()


@pytest.fixture()
def flooded(r: redis.Redis, keys: Keys) -> Keys:
    flood(r, keys)
    return keys


def test_every_entry_is_counted_and_one_page_listed(r: redis.Redis, flooded: Keys) -> None:
    state = read_fleet_state(r, flooded, limit=50)
    assert state.workers_total == FORGED + MANAGED and sum(state.worker_states.values()) == state.workers_total
    assert len(state.worker_states) <= SUMMARY_HOSTS + 1  # 51 distinct states named: the rest are "other"
    assert (state.dead_total, state.malformed_total) == (DEAD, UNREADABLE)
    assert len(state.workers) == 50 and len(state.hosts) == 50 and state.truncated
    assert len(state.dead_workers) <= 50 and len(state.malformed_workers) <= 50
    assert state.hosts_total == FORGED + 1
    assert state.slots == FORGED * 10 + MANAGED * 5  # totals over every live worker, not the page
    # The managed ones lead the page; the rest are summarised as not managed by the controller.
    assert [w.id for w in state.workers[:MANAGED]] == ["real:1", "real:2", "real:3"]
    assert all(w.managed for w in state.workers[:MANAGED]) and not any(w.managed for w in state.workers[MANAGED:])
    assert state.hosts[0].name == "real"
    assert state.unmanaged is not None
    assert (state.unmanaged.total, state.unmanaged.hosts) == (FORGED, FORGED)
    assert len(state.unmanaged.first) == 50 and len(state.unmanaged.by_host) <= SUMMARY_HOSTS


def test_pages_cover_the_workers_without_overlap(r: redis.Redis, flooded: Keys) -> None:
    half = (FORGED + MANAGED + 1) // 2
    pages = [read_fleet_state(r, flooded, limit=half, page=p) for p in (1, 2, 3)]
    ids = [w.id for s in pages for w in s.workers]
    assert len(ids) == len(set(ids)) == FORGED + MANAGED
    assert pages[2].workers == [] and pages[2].workers_total == FORGED + MANAGED


def status(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str, *argv: str) -> str:
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["status", *argv]) == 0
    return capsys.readouterr().out


def test_the_cli_prints_a_bounded_summary(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, redis_url: str, flooded: Keys
) -> None:
    text = status(capsys, monkeypatch, redis_url, "--key-prefix", flooded.prefix)
    assert len(text.encode()) < 32_000, len(text.encode())  # a screen, not 10,000 rows
    assert f"workers {FORGED + MANAGED} (" in text and f"dead {DEAD}" in text
    assert f"not managed by the controller: {FORGED} workers on {FORGED} hosts" in text
    assert "--page 2" in text
    assert "[red]x0:1" in text  # a forged id is shown as the text it is, not taken as markup

    raw = status(capsys, monkeypatch, redis_url, "--key-prefix", flooded.prefix, "--json", "--limit", "20")
    assert len(raw.encode()) < 64_000, len(raw.encode())
    data: dict[str, Any] = json.loads(raw)  # one object, nothing printed around it
    assert (data["workers_total"], data["limit"], data["page"], data["truncated"]) == (FORGED + MANAGED, 20, 1, True)
    assert len(data["workers"]) == 20 and data["unmanaged"]["total"] == FORGED
    assert data["worker_states"] and data["dead_total"] == DEAD and data["malformed_total"] == UNREADABLE


def test_the_cli_rejects_a_bad_page(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--page", "0"], ["--limit", "-1"]):
        with pytest.raises(SystemExit) as exc:
            main(["status", *argv])
        assert exc.value.code == 2
    assert "pages count from 1" in capsys.readouterr().err
