"""One read of the fleet from Redis: the queue, every registered worker's heartbeat and in-flight list.

The one reader behind the controller's signal source, ``status`` and the roles' fleet helper, so that they
agree on who is alive and what it holds. A registered worker whose heartbeat key expired is *dead* (the reaper
returns its tasks); one whose heartbeat cannot be decoded (:class:`captcha_fleet.contract.records.RecordError`) is
*malformed*: skipped, counted in :attr:`FleetSnapshot.malformed` and logged as a warning, never an exception
that would blind the reader to the rest of the fleet. In-flight counts every registered worker's list, live or
not: those tasks are neither queued nor finished.

A caller that knows which workers are its own (the controller: the services it manages) passes ``known``; a
readable heartbeat under any other id is *unknown*: kept apart in :attr:`FleetSnapshot.unknown`, so it is shown
and alerted on but never counted as capacity or steered (any worker host can write a heartbeat under any id).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import Heartbeat, RecordError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveWorker:
    """A registered worker with a readable heartbeat (host and instance filled in from its id)."""

    beat: Heartbeat
    in_flight: int  # the length of its in-flight list

    @property
    def id(self) -> str:
        """``host:instance``."""
        return self.beat.id

    @property
    def host(self) -> str:
        """The host it runs on."""
        return self.beat.host

    @property
    def state(self) -> str:
        """running | draining | fatal | failed | stopped."""
        return self.beat.state

    @property
    def busy(self) -> int:
        """Slots solving now."""
        return self.beat.busy

    @property
    def pid(self) -> int | None:
        """Its process id on its host."""
        return self.beat.pid


@dataclass(frozen=True)
class FleetSnapshot:
    """What one read saw; the counts come from one MULTI/EXEC, so they are consistent with each other."""

    pending: int
    in_flight: int
    workers: Mapping[str, LiveWorker] = field(default_factory=dict)
    dead: list[str] = field(default_factory=list)  # registered, heartbeat expired
    malformed: list[str] = field(default_factory=list)  # registered, heartbeat unreadable: skipped
    unknown: Mapping[str, LiveWorker] = field(default_factory=dict)  # readable, but not one ``known`` names
    extra: list[Any] = field(default_factory=list)  # replies to the caller's own commands, in order


def read_snapshot(
    client: redis.Redis,
    keys: Keys,
    host: str | None = None,
    extra: Callable[[Any], None] | None = None,
    known: Callable[[str], bool] | None = None,
) -> FleetSnapshot:
    """Read the queue length and every registered worker (only ``host``'s when given) in one transaction.

    ``extra`` may queue more commands on the same pipeline (their replies land in ``FleetSnapshot.extra``), so a
    caller's own counts belong to the same instant. With ``known``, live workers whose id it refuses land in
    ``FleetSnapshot.unknown`` instead of ``workers``. Raises ``redis.RedisError`` when Redis cannot be read.
    """
    members = [_text(m) for m in cast("list[bytes | str]", client.zrange(keys.workers, 0, -1))]
    if host is not None:
        members = [m for m in members if m.startswith(f"{host}:")]
    pipe = client.pipeline(transaction=True)
    pipe.llen(keys.tasks)
    for worker_id in members:
        pipe.get(keys.heartbeat(worker_id))
        pipe.llen(keys.inflight(worker_id))
    if extra is not None:
        extra(pipe)
    replies = pipe.execute()
    workers: dict[str, LiveWorker] = {}
    unknown: dict[str, LiveWorker] = {}
    dead: list[str] = []
    malformed: list[str] = []
    in_flight = 0
    for index, worker_id in enumerate(members):
        raw, held = replies[1 + 2 * index], int(replies[2 + 2 * index])
        in_flight += held
        if raw is None:
            dead.append(worker_id)
            continue
        try:
            beat = Heartbeat.from_json(raw).with_worker_id(worker_id)
        except RecordError as exc:
            if not malformed:  # one line per read, however many: a flood of them must not flood the log
                log.warning("skipped the malformed heartbeat of %s: %s", worker_id, exc)
            malformed.append(worker_id)
            continue
        (workers if known is None or known(worker_id) else unknown)[worker_id] = LiveWorker(beat, held)
    snapshot = FleetSnapshot(
        pending=int(replies[0]),
        in_flight=in_flight,
        workers=workers,
        dead=dead,
        malformed=malformed,
        unknown=unknown,
        extra=list(replies[1 + 2 * len(members) :]),
    )
    if len(malformed) > 1:
        log.warning("skipped %d malformed heartbeats in all", len(malformed))
    return snapshot


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
