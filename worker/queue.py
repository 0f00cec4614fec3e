"""The reliable queue: atomic claims into per-worker in-flight lists, one result per task, reaping.

Every step that must not be torn apart by a crash is one Lua script (``worker/lua/``): a task is always
in exactly one of the queue, some worker's in-flight list, or the results hash (or the dead-letter list).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import redis

from captcha_fleet.contract.config import FleetConfig
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import Event, Heartbeat, RecordError, Result, StoredCaptcha
from captcha_fleet.contract.redis_connect import Durability
from captcha_fleet.contract.results_retention import expire_results
from captcha_fleet.contract.tasks import read_task_id
from captcha_fleet.contract.ttl_lock import LockScripts, TtlLock

from .scripts import Scripts

log = logging.getLogger(__name__)
DEADLETTER_RAW_PREFIX = 1024
# How long a cleanly stopped worker's note stays: many controller intervals, then it expires by itself.
STOP_NOTE_S = 300
# Error classes of results the solver writes right after dead-lettering the payload (it left the in-flight list).
DEADLETTERED = frozenset({"deadletter", "malformed"})


@dataclass(frozen=True)
class Claimed:
    """A claimed payload and what Redis knows about its task's history."""

    raw: bytes
    requeues: int = 0
    captcha: StoredCaptcha | None = None
    has_result: bool = False


@dataclass(frozen=True)
class Outcome:
    """A finished task's result and the event the controller reads."""

    task_id: str
    raw: bytes
    result: Result
    event: Event


class TaskQueue:
    """The Redis side of one worker: claim, finish, dead-letter, release, reap, expire."""

    def __init__(self, client: redis.Redis, config: FleetConfig, worker_id: str) -> None:
        self.client = client
        self.config = config
        self.keys: Keys = config.keys
        self.worker_id = worker_id
        self.inflight_key = self.keys.inflight(worker_id)
        self.scripts = Scripts(client)
        self.lock_scripts = LockScripts(client)
        self.durability = Durability.of(config)
        self.retention_allowed = True  # False once Redis refused retention to our user (the controller owns it)

    # --- claiming ---------------------------------------------------------------------------------
    def claim(self, count: int, block_s: float) -> list[Claimed]:
        """Claim up to ``count`` tasks; block up to ``block_s`` for the first one if the queue is empty."""
        if count < 1:
            return []
        # With replicas required, a claim counts only once they hold it: a failover then cannot put a task we
        # are about to pay for back at the head of the queue (the caller treats a refusal as a lost reply).
        # claim_many refuses a payload longer than our limit in Redis, from its length: it never reaches us.
        refused, raws = self._claim_screened("claim", count)
        if not raws and not refused:
            pipe = self.client.pipeline(transaction=False)
            # BLMOVE takes a fractional timeout since Redis 6; redis-py's stub says int.
            pipe.blmove(self.keys.tasks, self.inflight_key, block_s, "LEFT", "RIGHT")  # type: ignore[arg-type]
            raw = self.durability.execute(pipe)[0]
            if raw is not None:
                raws = [bytes(raw)] if isinstance(raw, bytes) else [str(raw).encode()]
            del raw
            if raws and len(raws[0]) > self.config.worker.max_payload_bytes:
                # The one payload a blocking claim brings whole: swapped for its stub in Redis, never parsed here.
                length, raws = len(raws[0]), []
                _, raws = self._claim_screened("tail", length)
        if not raws:
            return []
        return self._history(raws)

    def _claim_screened(self, mode: str, count_or_length: int) -> tuple[int, list[bytes]]:
        """Run claim_many: how many oversized payloads it dead-lettered, and the payloads and stubs claimed."""
        pipe = self.client.pipeline(transaction=False)
        self.scripts.claim_many(
            keys=[self.keys.tasks, self.inflight_key, self.keys.deadletter],
            args=[mode, count_or_length, self.config.worker.max_payload_bytes, self.worker_id],
            client=pipe,
        )
        reply = list(self.durability.execute(pipe)[0])
        refused = max(0, int(reply[0]))
        if refused:
            log.warning("dead-lettered %d payload(s) over the size limit with no readable id", refused)
        return refused, [bytes(raw) for raw in reply[1:]]

    def _history(self, raws: Sequence[bytes]) -> list[Claimed]:
        """Take each claimed payload as its task's holder and look up its requeue count, stored CAPTCHA id and
        result, batched; a second copy of a task someone holds now is dropped here (``hold.lua``), never solved."""
        ids = [read_task_id(raw) for raw in raws]
        inflight_prefix = self.keys.inflight("")
        keys = [self.keys.holders, self.inflight_key, self.keys.attempts, self.keys.captcha_ids, self.keys.results]
        pipe = self.client.pipeline(transaction=False)
        for raw, task_id in zip(raws, ids, strict=True):
            if task_id is None:
                continue
            self.scripts.hold(keys=keys, args=[task_id, raw, self.worker_id, inflight_prefix], client=pipe)
        replies = iter(pipe.execute())
        claimed = []
        copies = 0
        for raw, task_id in zip(raws, ids, strict=True):
            if task_id is None:
                claimed.append(Claimed(raw))
                continue
            reply = list(next(replies))
            if int(reply[0]) == 1:
                copies += 1
                continue
            attempts, captcha, has_result = reply[1:]
            claimed.append(
                Claimed(
                    raw,
                    requeues=int(attempts or 0),
                    captcha=_stored_captcha(captcha),
                    has_result=bool(has_result),
                )
            )
        if copies:
            log.info("dropped %d copy(ies) of task(s) held now (a producer's push retried after a lost reply)", copies)
        return claimed

    def remember_captcha(self, task_id: str, captcha_id: str, submitted_at: float) -> None:
        """Store the provider's CAPTCHA id so a requeued task resumes polling instead of paying again."""
        record = StoredCaptcha(captcha_id, submitted_at, self.worker_id, polls=0)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.captcha_ids, task_id, record.to_json())
        self.durability.execute(pipe)  # a failover must not forget what we already paid for

    def count_polls(self, polled: Iterable[tuple[str, StoredCaptcha]]) -> int:
        """Store each task's CAPTCHA with its poll count, where the task still holds that CAPTCHA; one round trip.

        Called before the polls are sent, so a worker that dies mid-poll leaves a count that includes them:
        whoever resumes the CAPTCHA stays within the provider's per-CAPTCHA budget.
        """
        args: list[str] = []
        for task_id, record in polled:
            args.extend((task_id, record.captcha_id, record.to_json()))
        if not args:
            return 0
        return int(self.scripts.count_polls(keys=[self.keys.captcha_ids], args=args))

    # --- finishing --------------------------------------------------------------------------------
    def finish_many(self, outcomes: Iterable[Outcome]) -> list[bool]:
        """Write each task's result (first writer wins) and retire it; one round trip for the batch."""
        outcomes = list(outcomes)
        if not outcomes:
            return []
        results_cfg = self.config.results
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        for outcome in outcomes:
            fields: list[str | int | float] = []
            for name, value in outcome.event.to_fields().items():
                fields.extend((name, value))
            self.scripts.finish(
                keys=[
                    self.keys.results,
                    self.inflight_key,
                    self.keys.notify(outcome.task_id),
                    self.keys.results_expiry,
                    self.keys.events,
                    self.keys.completed_total,
                    self.keys.captcha_ids,
                    self.keys.attempts,
                    self.keys.done(outcome.task_id),
                    self.keys.holders,
                ],
                args=[
                    outcome.task_id,
                    outcome.result.to_json(),
                    outcome.raw,
                    max(1, int(results_cfg.notify_ttl_s)),
                    now + results_cfg.retention_s,
                    results_cfg.events_maxlen,
                    "1" if outcome.event.error_class in DEADLETTERED else "0",
                    *fields,
                ],
                client=pipe,
            )
        return [bool(x) for x in self.durability.execute(pipe)]

    def deadletter(self, raw: bytes, reason: str, task_id: str | None = None) -> None:
        """Move an unusable payload from our in-flight list to the dead-letter list, with the reason."""
        record = {
            "reason": reason,
            "task_id": task_id,
            "worker": self.worker_id,
            "ts": time.time(),
            "raw": raw[:DEADLETTER_RAW_PREFIX].decode("utf-8", "replace"),
            "raw_bytes": len(raw),
        }
        self.scripts.deadletter(keys=[self.inflight_key, self.keys.deadletter], args=[raw, json.dumps(record)])

    def release_all(self) -> int:
        """Return our in-flight tasks to the head of the queue without counting an attempt (graceful)."""
        return self.requeue_worker(self.worker_id, count_attempt=False)

    def release(self, raw: bytes) -> bool:
        """Return one in-flight task to the head of the queue, if still in flight (e.g. the key is invalid)."""
        return bool(self.scripts.release_one(keys=[self.inflight_key, self.keys.tasks], args=[raw]))

    def orphans(self, known: Iterable[bytes]) -> list[bytes]:
        """Payloads in our in-flight list that this process does not hold (a claim whose reply was lost)."""
        held = Counter(known)
        found: list[bytes] = []
        for raw in cast("list[bytes]", self.client.lrange(self.inflight_key, 0, -1)):
            if held[raw] > 0:
                held[raw] -= 1
            else:
                found.append(raw)
        return found

    def requeue_worker(self, worker_id: str, count_attempt: bool) -> int:
        """Move a worker's in-flight tasks back to the head of the queue, in their order."""
        moved = self.scripts.requeue(
            keys=[self.keys.inflight(worker_id), self.keys.tasks, self.keys.attempts],
            args=["1" if count_attempt else "0"],
        )
        return int(moved)

    # --- liveness ---------------------------------------------------------------------------------
    def heartbeat(self, beat: Heartbeat, ttl_s: float) -> bool:
        """Publish our stats under a key that expires if we stop refreshing it; False if we had been unregistered.

        The registry's score is the time of our last beat: the reaper gives a silent worker that long plus the
        failover allowance before it hands our tasks to others. Unregistered means reaped (or our first beat).
        A stop note an earlier process of our name left is taken back: we run.
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.keys.heartbeat(self.worker_id), beat.to_json(), px=int(ttl_s * 1000))
        pipe.zadd(self.keys.workers, {self.worker_id: time.time()})
        pipe.delete(self.keys.stopped(self.worker_id))
        return int(pipe.execute()[1]) == 0

    def previous_process(self) -> str | None:
        """The process identity in our heartbeat key, left by an earlier process of our name (if any)."""
        raw = cast("bytes | None", self.client.get(self.keys.heartbeat(self.worker_id)))
        try:
            beat = Heartbeat.from_json(raw) if raw is not None else None
        except RecordError:
            return None
        if beat is None or not beat.process:
            return None
        return beat.process

    def unregister(self, process: str = "") -> None:
        """Remove our heartbeat and registry entry (after a clean drain), and leave a note that we stopped.

        The note (``{prefix}:stopped:<id>``, kept :data:`STOP_NOTE_S`) tells the controller the heartbeat is
        missing because the process ended, not because Redis moved: a service stopped outside the controller is
        replaced at its next look.
        """
        note = json.dumps({"at": time.time(), "process": process})
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.keys.heartbeat(self.worker_id))
        pipe.zrem(self.keys.workers, self.worker_id)
        pipe.set(self.keys.stopped(self.worker_id), note, ex=STOP_NOTE_S)
        pipe.execute()

    def read_target(self, host: str) -> tuple[int | None, bool]:
        """The controller's slot target for us (or the default) and whether our host is draining."""
        own, default, draining = self.client.mget(
            [self.keys.target(self.worker_id), self.keys.default_target, self.keys.host_draining(host)]
        )
        value = own if own is not None else default
        target: int | None
        try:
            target = int(value) if value is not None else None
        except ValueError:
            log.warning("ignoring a non-integer slot target %r", value)
            target = None
        return target, draining is not None

    def reap(self, lock_ttl_s: float, silent_s: float = 0.0) -> dict[str, int]:
        """Requeue the in-flight tasks of every dead worker; expire old results.

        Dead: its heartbeat key expired and its last beat is more than ``silent_s`` old (the heartbeat TTL plus
        the time a failover or a network cut may keep a live worker from Redis; hosts' clocks agree far better
        than that). Runs under a TTL lock so many workers can call it and only one acts at a time.
        """
        lock = TtlLock(self.client, self.keys.reaper_lock, lock_ttl_s, scripts=self.lock_scripts)
        if not lock.acquire():
            return {}
        try:
            requeued: dict[str, int] = {}
            # Only those silent for longer than silent_s: a worker cut off for less comes back and goes on.
            silent = self.client.zrangebyscore(self.keys.workers, "-inf", f"({time.time() - silent_s}")
            members = [m.decode() if isinstance(m, bytes) else str(m) for m in silent]
            pipe = self.client.pipeline(transaction=False)
            for worker_id in members:
                pipe.exists(self.keys.heartbeat(worker_id))
            alive = pipe.execute() if members else []
            for worker_id, is_alive in zip(members, alive, strict=True):
                if is_alive:
                    continue
                moved = self.requeue_worker(worker_id, count_attempt=True)
                self.client.zrem(self.keys.workers, worker_id)
                if moved:
                    requeued[worker_id] = moved
                    log.warning("worker %s is dead: requeued %d in-flight task(s)", worker_id, moved)
            self.expire_results()
            return requeued
        finally:
            lock.release()

    def expire_results(self, batch: int = 500, max_batches: int = 20) -> int:
        """Delete results past their retention, in bounded batches, while this worker's Redis user may.

        Under the per-role ACL users the controller's leader owns retention (the worker user has no HDEL on the
        results hash): the first refusal is said once and the worker leaves it to the controller from then on.
        """
        if not self.retention_allowed:
            return 0
        try:
            return expire_results(self.client, self.keys, time.time(), batch, max_batches)
        except redis.exceptions.NoPermissionError:
            self.retention_allowed = False
            log.info("result retention is the controller's under this Redis user: the reaper leaves it to it")
            return 0


def _stored_captcha(value: bytes | None) -> StoredCaptcha | None:
    """A stored CAPTCHA, or None when there is none or it cannot be read (the task is then paid afresh)."""
    if value is None:
        return None
    try:
        return StoredCaptcha.from_json(value)
    except RecordError as exc:
        log.warning("unreadable stored CAPTCHA record (%s): the task will be submitted again", exc)
        return None
