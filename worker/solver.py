"""The solve engine: submits on a small HTTP thread pool, one batch poller per process, deadlines.

A solve holds a *slot*, not a thread: while the provider works, the solve is only a record that the
poller includes in its next ``res.php?ids=`` request. So one process holds thousands of solves in flight,
and a poll costs one request for all of them. The poller ticks at most once per interval; an id joins the
ticks only after its method's first-poll delay, and its polls are spread so it never exceeds
``max_polls_per_captcha`` before its deadline. Interval and first-poll delay follow
:func:`captcha_fleet.contract.poll_pace.poll_pace`: the provider's advice for a lone CAPTCHA, faster as the process
holds more solves (one request covers them all).

Every task held has one :class:`Solve` in ``_solves`` from its claim until its result is written (or it
goes back to the queue), so ``held_payloads`` never misses a task whose result or CAPTCHA id is still being
written. Its result is *decided* once (``Solve.outcome``): whoever decides first (an answer, an error, the
deadline) writes it; nothing is submitted for a decided task. Deadlines, submit retries and write retries
run on their own timer thread, so a poll tick hung on a slow ``res.php`` cannot make a deadline late.

While the plan is full (a submit was refused lately) the process counts the provider threads it knows are free:
each answer frees one, which the oldest waiting solve takes at once; a new claim with none known free waits
instead of being refused; a retry turn from the budget may bet on a thread freed but not yet seen only once one of
its own solves has ended since the refusal. Past the number of its solves the provider held when it last refused,
submits go one at a time, one more for each accept past it (a burst's overshoot is refused once, not slot by
slot). Issue 24: requests per task 1.30-1.34 -> 1.16-1.26 at 100 threads, 1.11 -> 1.08 at 2,000 (bench/README.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis

from captcha_fleet.contract.api_client import CaptchaApi
from captcha_fleet.contract.api_errors import NOT_READY, ApiError, ErrorClass, classify, error_kind, is_error_answer
from captcha_fleet.contract.config import ApiConfig, WorkerConfig
from captcha_fleet.contract.poll_pace import fastest_pace, poll_pace
from captcha_fleet.contract.records import Event, Result, StoredCaptcha
from captcha_fleet.contract.tasks import Malformed, Task, parse_task, read_task_id

from .concurrency import Slot, SlotLimiter, is_plan_full, retry_delay
from .queue import Claimed, Outcome, TaskQueue
from .retry_budget import RetryBudget
from .stats import WorkerStats

log = logging.getLogger(__name__)
WRONG_CAPTCHA_ID = "ERROR_WRONG_CAPTCHA_ID"
# Share of the per-CAPTCHA poll budget spent at the plain poll interval before polls are stretched.
EARLY_POLL_SHARE = 0.6
# A solve joins a tick up to this fraction of an interval before it is due (the nearest tick, not the next).
POLL_ROUNDING = 0.5
# After the early polls, each gap is this much longer than the one before.
POLL_STRETCH = 1.5
# A result or CAPTCHA id that Redis refused is written again after this long.
WRITE_RETRY_S = 0.2


def poll_spacing(polls: int, time_left_s: float, api: ApiConfig) -> float | None:
    """Seconds from poll number ``polls`` to the next one; None once the per-CAPTCHA budget is spent.

    The interval while most of the budget is left (most CAPTCHAs are solved soon after the first poll),
    then each gap ``POLL_STRETCH`` times the one before; the last poll of the budget is kept for just
    before the deadline, so even a slow CAPTCHA is looked at once more before it is given up.
    """
    budget = max(1, api.max_polls_per_captcha)
    interval = api.poll_interval_s
    if polls >= budget:
        return None
    if polls == budget - 1:
        return max(interval, time_left_s - interval)
    early = max(1, math.ceil(EARLY_POLL_SHARE * budget))
    if polls < early:
        return interval
    # Never past the deadline: the stretched gap ends at the last look, just before it.
    return min(float(interval * POLL_STRETCH ** (polls - early + 1)), max(interval, time_left_s - interval))


def polls_spent(age_s: float, first_poll_s: float, api: ApiConfig) -> int:
    """How many polls a CAPTCHA submitted ``age_s`` ago has had on the :func:`poll_spacing` schedule.

    A resumed solve starts from this count so the polls of both workers together stay under the budget.
    """
    if age_s < first_poll_s:
        return 0
    polls, at = 1, first_poll_s
    while (spacing := poll_spacing(polls, api.task_deadline_s - at, api)) is not None and at + spacing <= age_s:
        polls, at = polls + 1, at + spacing
    return min(polls, max(1, api.max_polls_per_captcha) - 1)


@dataclass
class Solve:
    """One task in flight on this worker."""

    task: Task
    raw: bytes
    claimed_at: float
    requeues: int
    deadline: float  # monotonic
    captcha_id: str | None = None
    submitted_at: float | None = None  # wall clock, for api_seconds
    next_poll: float = 0.0  # monotonic
    polls: int = 0
    submit_failures: int = 0
    resumed: bool = False
    seq: int = field(default=0)
    slot: Slot | None = None  # freed once, when the task leaves this process
    outcome: Outcome | None = None  # the result, once decided (then never submitted, polled or expired)
    id_stored: bool = True  # False while a CAPTCHA id we paid for is not yet in Redis


class SolveEngine:
    """Turns claimed payloads into results."""

    def __init__(
        self,
        api: CaptchaApi,
        queue: TaskQueue,
        limiter: SlotLimiter,
        stats: WorkerStats,
        api_config: ApiConfig,
        worker_config: WorkerConfig,
        host: str,
        on_fatal: Callable[[str], None],
    ) -> None:
        self.api = api
        self.queue = queue
        self.limiter = limiter
        self.stats = stats
        self.api_config = api_config
        self.worker_config = worker_config
        self.host = host
        self.on_fatal = on_fatal
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._solves: dict[int, Solve] = {}  # every task held, until its result is written
        self._retries: list[tuple[float, int]] = []  # (monotonic due, seq)
        # Solves refused for a full plan, first refused first out; one retry turn is due per solve queued.
        self._plan_queue: deque[Solve] = deque()
        self._plan_turns: list[float] = []  # (monotonic) when the next queued solves may retry: a min-heap
        # While the plan is full (_plan_full): provider threads this process knows are free, its answers since the
        # latest refusal less its submits since (below zero when a retry took a thread an answer had not shown yet),
        # and whether any answer came since that refusal (see _may_retry_plan).
        self._known_free = 0
        self._answered_since_refusal = False
        self._refused_at = -math.inf  # (monotonic) the latest plan-full refusal
        self._next_probe_at = -math.inf  # (monotonic) when a retry may go out on no known free thread again
        # Solves of ours at the provider when it last refused one (raised by every accept above it): past it, one
        # submit at a time, one more for each accept past it (see _past_edge). None until a refusal.
        self._edge: int | None = None
        self._edge_refused = 0  # the edge as the last refusal set it
        self._sending = 0  # submits on their way to in.php
        self.retry_budget = RetryBudget.for_backoff(
            api_config.backoff_base_s, requests_per_task=api_config.requests_per_task
        )
        self._deadlines: list[tuple[float, int]] = []  # (monotonic deadline, seq)
        self._unwritten: dict[int, Solve] = {}  # decided, the write refused by Redis: retried
        self._unstored: dict[int, Solve] = {}  # paid for, the CAPTCHA id refused by Redis: retried
        self._write_retry_at = 0.0
        self._flush_lock = threading.Lock()  # one writer of retried results at a time
        self._seq = itertools.count(1)
        self._next_tick = 0.0
        self._pace = poll_pace(0, api_config)  # follows the solves waiting for an answer, every tick
        self._paced_api = api_config  # api_config with the paced poll interval, for poll_spacing
        self._submitters = ThreadPoolExecutor(max_workers=worker_config.submit_threads, thread_name_prefix="submit")
        self.poller = threading.Thread(target=self._poll_loop, name="batch-poller", daemon=True)
        self.timer = threading.Thread(target=self._timer_loop, name="deadline-timer", daemon=True)

    # --- lifecycle ----------------------------------------------------------------------------------
    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """The engine's long-lived threads (the service watches that they stay alive)."""
        return (self.poller, self.timer)

    def start(self) -> None:
        """Start the batch poller and the deadline timer."""
        self.poller.start()
        self.timer.start()

    def stop(self) -> None:
        """Stop polling and submitting; what is still in flight stays in Redis for ``release_all``."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._submitters.shutdown(wait=True, cancel_futures=True)
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout=30)
        self._store_ids()  # a requeued task must find the CAPTCHA it is paid for, not pay again
        self._flush_unwritten(wait=True)

    def held_payloads(self) -> list[bytes]:
        """The raw payloads of every task this process holds (solving, or with a result not yet written)."""
        with self._lock:
            return [s.raw for s in self._solves.values()]

    @property
    def in_flight(self) -> int:
        """Solves held right now."""
        with self._lock:
            return len(self._solves)

    # --- intake -----------------------------------------------------------------------------------
    def accept(self, claimed: Claimed, slot: Slot) -> None:
        """Take one claimed payload and the slot it holds, and start solving it.

        A Redis error propagates (the payload stays in our in-flight list for a later release; the caller
        frees the slot); any other exception is this payload's fault or a bug, so the payload is
        dead-lettered with an error result instead of killing the claimer.
        """
        try:
            self._accept(claimed, slot)
        except redis.RedisError as exc:
            if not isinstance(exc, redis.DataError):
                raise
            log.exception("could not start a claimed task; dead-lettering it")
            self.quarantine(claimed.raw, "ERROR_BAD_TASK: the worker could not store it (DataError)", slot)
        except Exception as exc:
            log.exception("could not start a claimed task; dead-lettering it")
            self.quarantine(claimed.raw, f"ERROR_BAD_TASK: the worker could not handle it ({type(exc).__name__})", slot)

    def quarantine(self, raw: bytes, reason: str, slot: Slot) -> None:
        """Dead-letter a payload we hold (with its slot) with an error result when its id is usable."""
        with self._lock:
            for seq, solve in list(self._solves.items()):
                if solve.raw is raw:
                    del self._solves[seq]
        task_id = read_task_id(raw)
        try:
            self.queue.deadletter(raw, reason, task_id)
        except Exception:
            log.exception("could not dead-letter a payload; it stays in flight for the reaper")
            slot.release()
            return
        if task_id is None:
            self.stats.record_result(False, "malformed", 0.0, None, "")
            slot.release()
            return
        solve = self._hold(Solve(Task(task_id, "", {}), raw, time.time(), 0, time.monotonic(), slot=slot))
        self._finish([(solve, self._error(solve, reason, "malformed"))])

    def _hold(self, solve: Solve, deadline: bool = False) -> Solve:
        """Register a task this process holds; with ``deadline``, its deadline timer runs from now on."""
        with self._wake:
            solve.seq = next(self._seq)
            self._solves[solve.seq] = solve
            if deadline:
                heapq.heappush(self._deadlines, (solve.deadline, solve.seq))
            self._wake.notify_all()
        return solve

    def _accept(self, claimed: Claimed, slot: Slot) -> None:
        parsed = parse_task(claimed.raw, self.worker_config.max_payload_bytes)
        if isinstance(parsed, Malformed):
            self._reject(claimed, parsed, slot)
            return
        now_wall, now = time.time(), time.monotonic()
        solve = Solve(
            task=parsed,
            raw=claimed.raw,
            claimed_at=now_wall,
            requeues=claimed.requeues,
            deadline=now + self.api_config.task_deadline_s,
            slot=slot,
        )
        if claimed.has_result:
            # Another worker already answered this task (it was requeued after a false death).
            self._hold(solve)
            self._finish([(solve, self._outcome(solve, "duplicate"))])
            return
        if claimed.requeues >= self.worker_config.max_attempts:
            reason = f"dead-lettered: its worker died {claimed.requeues} times while solving it"
            self.queue.deadletter(claimed.raw, reason, parsed.id)
            self._hold(solve)
            self._finish([(solve, self._error(solve, reason, "deadletter"))])
            return
        missing = parsed.missing_param()
        if missing is not None:
            # The provider would refuse the submit with this code (the method table's): answer it, unpaid.
            self._hold(solve)
            self._finish([(solve, self._error(solve, missing.missing_error, "task"))])
            return
        stored = claimed.captcha
        if stored is not None:
            age = max(0.0, now_wall - stored.submitted_at)
            if age < self.api_config.task_deadline_s:
                # Resume polling the CAPTCHA a dead or drained worker already paid for.
                solve.captcha_id, solve.submitted_at, solve.resumed = stored.captcha_id, stored.submitted_at, True
                solve.deadline = now + self.api_config.task_deadline_s - age
                first = self.api_config.first_poll_delay(parsed.method)
                solve.next_poll = now + max(0.0, first - age)
                solve.polls = self._polls_before(stored, age, parsed.method)
                if poll_spacing(solve.polls, solve.deadline - now, self.api_config) is None:
                    solve.next_poll = solve.deadline + 1.0  # its polls are spent: only the deadline ends it
                self._hold(solve, deadline=True)
                return
        self._hold(solve, deadline=True)
        self._submit_fresh(solve)

    def _polls_before(self, stored: StoredCaptcha, age_s: float, method: str) -> int:
        """The polls a resumed CAPTCHA has had: the stored count, so it goes on at its own schedule.

        A record without one (a worker that did not count) gets the most it could have had, polled at the
        fastest pace since it was submitted: the provider's limit holds, at the price of a late answer.
        """
        if stored.polls is not None:
            return stored.polls
        fast = fastest_pace(self.api_config)
        fast_api = dataclasses.replace(self.api_config, poll_interval_s=fast.interval_s)
        return polls_spent(age_s, fast.first_poll_s(self.api_config, method), fast_api)

    def _reject(self, claimed: Claimed, malformed: Malformed, slot: Slot) -> None:
        if malformed.task_id is None:
            self.queue.deadletter(claimed.raw, malformed.reason)
            self.stats.record_result(False, "malformed", 0.0, None, "unknown")
            slot.release()
            return
        reason = f"ERROR_BAD_TASK: {malformed.reason}"
        if malformed.deadletter:  # unparseable, its id salvaged: keep the payload for inspection, answer the id
            self.queue.deadletter(claimed.raw, reason, malformed.task_id)
        task = Task(malformed.task_id, "", {})
        solve = self._hold(Solve(task, claimed.raw, time.time(), claimed.requeues, time.monotonic(), slot=slot))
        self._finish([(solve, self._error(solve, reason, "malformed"))])

    # --- submitting -----------------------------------------------------------------------------------
    def _submit_fresh(self, solve: Solve) -> None:
        """Submit a newly claimed task now, or, while solves refused for a full plan wait, the oldest of them.

        A new claim follows a finished solve, whose provider thread is free: that submit goes out now, as
        before, but for the solve that has waited longest (the new one queues behind it), so a refused task
        does not wait out every retry turn while newer ones pass it.
        """
        with self._wake:
            now = time.monotonic()
            plan_full = self._plan_full(now)
            if plan_full and self._known_free <= 0:
                # No thread of the plan is known to be free: the new solve waits with the refused ones, for an
                # answer's thread or a retry turn, instead of a submit that would be refused.
                self._wait_for_plan(solve, now)
                return
            oldest = self._next_queued()
            if oldest is not None:
                self._plan_queue.append(solve)
            if plan_full:
                self._known_free -= 1
        self._submit_later(oldest or solve, 0.0)

    def _plan_full(self, now: float) -> bool:
        """Whether this process takes the plan as full: solves wait for it, or one was refused lately (call with
        the lock held)."""
        return bool(self._plan_queue) or now < self._plan_gate_ends()

    def _next_queued(self) -> Solve | None:
        """Take the oldest queued solve still worth a submit (call with the lock held)."""
        while self._plan_queue:
            solve = self._plan_queue.popleft()
            if self._may_submit(solve, time.monotonic()):
                return solve
        return None

    def _submit_later(self, solve: Solve, delay_s: float) -> None:
        if delay_s <= 0:
            # When shutting down the executor refuses: the task stays in flight in Redis and is released.
            with contextlib.suppress(RuntimeError):
                self._submitters.submit(self._submit, solve)
            return
        with self._wake:
            heapq.heappush(self._retries, (time.monotonic() + delay_s, solve.seq))
            self._wake.notify_all()

    def _submit(self, solve: Solve) -> None:
        with self._wake:
            # Checked on every try, however long it waited for a submit thread or a retry: a task whose
            # result is decided or whose deadline passed (the timer is about to answer it) is not paid for.
            now = time.monotonic()
            if not self._may_submit(solve, now):
                return
            if self._past_edge():
                self._wait_for_plan(solve, now)
                return
            self._sending += 1
        try:
            self._send(solve)
        finally:
            following = None
            with self._wake:
                self._sending -= 1
                if self._edge is not None:  # no scan of the solves while the plan was never full
                    self._edge = max(self._edge, self._at_provider())
                if self._sending == 0 and time.monotonic() >= self._plan_gate_ends():
                    following = self._next_queued()  # past the edge, the next waiting solve once this one is in
            if following is not None:
                self._submit_later(following, 0.0)

    def _past_edge(self) -> bool:
        """Whether another submit now would go past the plan's edge this process learned while one is on its way
        (call with the lock held).

        A burst claims every free slot at once: with the slots above the plan's threads (``slots_over_plan``), the
        submits past its edge were refused together, ten per burst at 100 threads, most of the refusals of a
        periodic load (bench/README.md, issue 24). Past the edge they go one at a time: the first refused, the
        rest wait for an answer's thread; the first accepted, the edge moves up and one more may be on its way
        for each accept past the refusal's edge (a slow start: a process whose share of a shared plan grew, or
        whose plan did, is not held to one submit per round trip).
        """
        if self._edge is None or self._at_provider() + self._sending < self._edge:
            return False
        return self._sending >= 1 + self._edge - self._edge_refused

    def _at_provider(self) -> int:
        """Solves of ours the provider has accepted and not answered yet (call with the lock held)."""
        return sum(1 for s in self._solves.values() if s.captcha_id is not None and s.outcome is None)

    def _wait_for_plan(self, solve: Solve, now: float) -> None:
        """Queue an unsent solve with those waiting for the plan, with a retry turn (call with the lock held)."""
        self._plan_queue.append(solve)
        heapq.heappush(self._plan_turns, now + self.retry_budget.next_delay(refused=False))
        self._wake.notify_all()

    def _send(self, solve: Solve) -> None:
        """One ``in.php`` request for ``solve``, and what follows its answer."""
        try:
            captcha_id = self.api.submit(solve.task.method, solve.task.params)
        except ApiError as exc:
            self._on_submit_error(solve, exc)
            return
        except Exception as exc:  # the request could not be built or sent: retrying cannot help
            log.exception("unexpected error submitting task %s", solve.task.id)
            self._on_submit_error(solve, ApiError(ErrorClass.TASK, f"ERROR_CLIENT: {type(exc).__name__}"))
            return
        self.limiter.on_success()
        self.retry_budget.on_accepted()
        submitted_at = time.time()
        with self._wake:
            solve.submitted_at, solve.captcha_id = submitted_at, captcha_id
            solve.id_stored = False
            decided = solve.outcome is not None
        if decided:  # its deadline passed while we were submitting: nothing to remember
            return
        self._store_id(solve)
        with self._wake:
            # The poller sees the id only now, with its first-poll delay set: never polled before it is due.
            solve.next_poll = time.monotonic() + self._pace.first_poll_s(self.api_config, solve.task.method)
            decided = solve.outcome is not None
            self._wake.notify_all()
        if decided:  # decided while we stored the id: forget it (the result's write may have run first)
            with contextlib.suppress(redis.RedisError):
                self.queue.client.hdel(self.queue.keys.captcha_ids, solve.task.id)

    def _may_submit(self, solve: Solve, now: float) -> bool:
        """Whether ``solve`` may be sent to ``in.php`` now (call with the lock held)."""
        return (
            not self._stopping
            and self._solves.get(solve.seq) is solve
            and solve.outcome is None
            and solve.captcha_id is None
            and solve.deadline > now
        )

    def _store_id(self, solve: Solve) -> bool:
        """Store the CAPTCHA id we paid for; on a Redis error keep it for the timer to store later.

        Until it is stored the task stays held here (never an orphan), so no one pays for it again.
        """
        if solve.captcha_id is None or solve.submitted_at is None:
            return True
        try:
            self.queue.remember_captcha(solve.task.id, solve.captcha_id, solve.submitted_at)
        except redis.RedisError as exc:
            log.warning("could not store the CAPTCHA id of task %s (%s); retrying", solve.task.id, exc)
            with self._wake:
                self._unstored[solve.seq] = solve
                self._schedule_write_retry()
            return False
        with self._lock:
            solve.id_stored = True
            self._unstored.pop(solve.seq, None)
        return True

    def _store_ids(self) -> None:
        """Store the CAPTCHA ids Redis refused before, for the tasks still undecided."""
        with self._lock:
            pending = [s for s in self._unstored.values() if s.outcome is None and s.seq in self._solves]
            self._unstored = {s.seq: s for s in pending}
        for solve in pending:
            if not self._store_id(solve):
                return  # Redis still refuses: the timer tries again later

    def _on_submit_error(self, solve: Solve, exc: ApiError) -> None:
        self.stats.record_api_error(error_kind(exc))
        if exc.error_class is ErrorClass.TASK:
            self._finish([(solve, self._error(solve, exc.code, "task"))])
        elif exc.error_class is ErrorClass.FATAL:
            with self._lock:
                ours = self._solves.get(solve.seq) is solve and solve.outcome is None
                if ours:
                    del self._solves[solve.seq]
            if ours:
                try:
                    self.queue.release(solve.raw)
                except redis.RedisError:
                    log.warning("could not return task %s to the queue; the reaper will", solve.task.id)
                self._free(solve)
            self.on_fatal(exc.code)
        else:
            solve.submit_failures += 1
            if is_plan_full(exc.code):
                self.limiter.on_capacity_error(exc.code, self._queue_for_plan(solve))
                return
            self.limiter.on_capacity_error(exc.code)
            api = self.api_config
            delay = retry_delay(exc.code, solve.submit_failures, api.backoff_base_s, api.backoff_max_s)
            log.debug("capacity error %s on task %s; retry in %.2fs", exc.code, solve.task.id, delay)
            self._submit_later(solve, delay)

    def _queue_for_plan(self, solve: Solve) -> int:
        """Queue a solve refused for a full plan, with one retry turn from the budget (the fleet's retries are
        a share of its accepted submits, not one per waiting slot); return how many of ours wait now."""
        due = time.monotonic() + self.retry_budget.next_delay()
        with self._wake:
            self._known_free, self._answered_since_refusal, self._refused_at = 0, False, time.monotonic()
            self._edge = self._edge_refused = self._at_provider()
            self._plan_queue = deque(s for s in self._plan_queue if self._may_submit(s, time.monotonic()))
            self._plan_queue.append(solve)
            heapq.heappush(self._plan_turns, due)
            self._wake.notify_all()
            return len(self._plan_queue)

    # --- polling ----------------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        """Tick until stopped; an exception from one tick is logged and the next tick runs."""
        failures = 0
        while not self._stopping:
            try:
                self._poll_loop_once()
                return
            except Exception:
                failures += 1
                log.exception("batch poller tick failed (%d so far); polling on", failures)
                time.sleep(min(1.0, 0.01 * 2 ** min(failures, 7)))

    def _poll_loop_once(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
                now = time.monotonic()
                waiting = [
                    s
                    for s in self._solves.values()
                    if s.captcha_id is not None and s.outcome is None and s.deadline > now
                ]
                self._set_pace(len(waiting))
                interval = self._pace.interval_s
                # On the tick grid a solve joins the tick nearest its due time, so on average it is polled
                # when due; off the grid (a lone CAPTCHA, a quiet spell) it waits until it is due.
                slack = POLL_ROUNDING * interval
                on_grid = 0.0 <= now - self._next_tick < slack
                pollable = [s for s in waiting if s.next_poll <= now + (slack if on_grid else 0.0)]
                tick_now = bool(pollable) and now >= self._next_tick
                if tick_now:
                    self._next_tick = now + interval
                if not tick_now:
                    self._wake.wait(max(0.001, self._next_wake(now, waiting) - now))
                    continue
            self._poll(pollable, now)

    # --- the deadline timer -------------------------------------------------------------------------
    def _timer_loop(self) -> None:
        """Deadlines, submit retries and write retries, apart from the poller (whose tick may hang)."""
        failures = 0
        while not self._stopping:
            try:
                self._timer_step()
                failures = 0
            except Exception:
                failures += 1
                log.exception("deadline timer step failed (%d so far); going on", failures)
                time.sleep(min(1.0, 0.01 * 2 ** min(failures, 7)))

    def _timer_step(self) -> None:
        """Wait until something is due, then act on it: expire, resubmit, write again."""
        with self._wake:
            if self._stopping:
                return
            now = time.monotonic()
            expired = self._pop_due(self._deadlines, now)
            due_retries = self._pop_due(self._retries, now)
            while self._plan_turns and self._plan_turns[0] <= now and self._may_retry_plan(now):
                probe = self._known_free <= 0  # no thread known free: the retry bets on one freed unseen
                if probe and now < self._next_probe_at:
                    break  # turns held by the gate go out one per turn's spacing, not all at once
                heapq.heappop(self._plan_turns)
                if (queued := self._next_queued()) is None:
                    continue
                due_retries.append(queued)
                self._known_free -= 1
                if probe:
                    self._next_probe_at = now + self.retry_budget.turn_spacing()
                    if not self._answered_since_refusal and now >= self._plan_gate_ends():
                        self._refused_at = now  # one probe per longest wait while no answer comes
            retry_writes = bool(self._unwritten or self._unstored) and self._write_retry_at <= now
            if retry_writes:
                self._write_retry_at = 0.0
            if not expired and not due_retries and not retry_writes:
                self._wake.wait(max(0.001, self._next_due(now) - now))
                return
        if expired:
            timeout = f"ERROR_TIMEOUT: no answer within {self.api_config.task_deadline_s:g}s"
            self._finish([(s, self._error(s, timeout, "deadline")) for s in expired])
        for solve in due_retries:
            self._submit_later(solve, 0.0)
        if retry_writes:
            self._store_ids()
            self._flush_unwritten()

    def _may_retry_plan(self, now: float) -> bool:
        """Whether a due plan-full retry may go out now (call with the lock held).

        Only once the provider can have a thread for it: an answer of ours came since the latest refusal (its
        thread is free), or none of ours is at the provider to free one (threads free only as other clients'
        solves end), or the longest wait has passed. After a burst fills the plan no solve ends for a solve's
        time; retries paced by the budget alone were all refused meanwhile (periodic on the congested profile:
        a third of its refusals, and 1.33 requests per task; bench/README.md, issue 24).
        """
        return self._answered_since_refusal or now >= self._plan_gate_ends() or self._at_provider() == 0

    def _plan_gate_ends(self) -> float:
        return self._refused_at + self.retry_budget.max_wait_s

    def _pop_due(self, heap: list[tuple[float, int]], now: float) -> list[Solve]:
        """The undecided solves whose entry in ``heap`` is due (call with the lock held)."""
        due: list[Solve] = []
        while heap and heap[0][0] <= now:
            _, seq = heapq.heappop(heap)
            solve = self._solves.get(seq)
            if solve is not None and solve.outcome is None:
                due.append(solve)
        return due

    def _next_due(self, now: float) -> float:
        """When the timer has something to do next (call with the lock held)."""
        candidates = [now + 1.0]
        for heap in (self._deadlines, self._retries):
            if heap:
                candidates.append(heap[0][0])
        if self._plan_turns:
            # A turn the gate holds is looked at again when an answer comes (notified) or its wait runs out.
            turn = max(self._plan_turns[0], self._next_probe_at if self._known_free <= 0 else now)
            candidates.append(turn if self._may_retry_plan(now) else max(turn, self._plan_gate_ends()))
        if (self._unwritten or self._unstored) and self._write_retry_at:
            candidates.append(self._write_retry_at)
        return min(candidates)

    def _schedule_write_retry(self) -> None:
        """Have the timer write refused results and ids again soon (call with the lock held)."""
        if not self._write_retry_at:
            self._write_retry_at = time.monotonic() + WRITE_RETRY_S
        self._wake.notify_all()

    def _set_pace(self, held: int) -> None:
        """Poll faster while more solves wait (call with the lock held)."""
        pace = poll_pace(held, self.api_config)
        if pace != self._pace:
            self._pace = pace
            self._paced_api = dataclasses.replace(self.api_config, poll_interval_s=pace.interval_s)

    def _next_wake(self, now: float, waiting: list[Solve]) -> float:
        candidates = [now + 1.0]
        if waiting:
            next_tick = self._next_tick
            slack = POLL_ROUNDING * self._pace.interval_s
            earliest = min(s.next_poll for s in waiting)
            # Due within the slack of the next grid tick: join it; otherwise wake when it is due.
            candidates.append(next_tick if earliest - slack <= next_tick else earliest)
        return min(candidates)

    def _poll(self, pollable: list[Solve], tick_at: float) -> None:
        """One tick: batched polls; the next polls are scheduled from the tick's start, not its end, so a
        solve still waiting is due exactly at the next tick (not a round trip after it)."""
        size = max(1, self.api_config.batch_size)
        for start in range(0, len(pollable), size):
            if self._stopping:
                return
            # A slow tick outlives deadlines: a solve decided meanwhile is not polled any more.
            batch = [s for s in pollable[start : start + size] if s.outcome is None]
            if not batch:
                continue
            ids = [s.captcha_id or "" for s in batch]
            self._count_polls(batch)
            self.retry_budget.on_poll_request()
            try:
                answers = self.api.poll_many(ids)
            except ApiError as exc:
                self.stats.record_api_error(error_kind(exc))
                if exc.error_class is ErrorClass.FATAL:
                    self.on_fatal(exc.code)
                self._schedule_next_polls(batch, tick_at)
                continue
            except Exception:
                log.exception("unexpected error polling %d CAPTCHAs", len(batch))
                self._schedule_next_polls(batch, tick_at)
                continue
            self._handle_answers(batch, answers, tick_at)

    def _count_polls(self, batch: list[Solve]) -> None:
        """Store each CAPTCHA's poll count, this poll included, before it is sent (see :meth:`_polls_before`)."""
        polled = [
            (s.task.id, StoredCaptcha(s.captcha_id, s.submitted_at, self.queue.worker_id, s.polls + 1))
            for s in batch
            if s.captcha_id is not None and s.submitted_at is not None
        ]
        try:
            self.queue.count_polls(polled)
        except redis.RedisError as exc:
            # Polling goes on: an older count only makes whoever resumes these poll a little more.
            log.warning("could not store the poll counts of %d CAPTCHA(s): %s", len(polled), exc)

    def _handle_answers(self, batch: list[Solve], answers: list[str], tick_at: float) -> None:
        done: list[tuple[Solve, Outcome]] = []
        again: list[Solve] = []
        for solve, answer in zip(batch, answers, strict=True):
            solve.polls += 1
            if answer == NOT_READY:
                again.append(solve)
            elif not is_error_answer(answer):
                done.append((solve, self._success(solve, answer)))
            elif classify(answer) is ErrorClass.TASK:
                self.stats.record_api_error("task")
                if answer == WRONG_CAPTCHA_ID and solve.resumed:
                    # The provider forgot the CAPTCHA a previous worker submitted: submit it afresh.
                    solve.captcha_id, solve.resumed = None, False
                    self._submit_later(solve, 0.0)
                else:
                    done.append((solve, self._error(solve, answer, "task")))
            else:
                self.stats.record_api_error(classify(answer).value)
                again.append(solve)
        self._schedule_next_polls(again, tick_at)
        if done:
            self._hand_freed_threads(len(done))
        self._finish(done)

    def _hand_freed_threads(self, answers: int) -> None:
        """Each answer is a provider thread free again: while the plan is full, the oldest waiting solves take
        them now (a new claim that follows finds none left, and waits in turn)."""
        handed: list[Solve] = []
        with self._wake:
            self._known_free += answers
            self._answered_since_refusal = True
            if self._plan_full(time.monotonic()):
                while self._known_free > 0 and (queued := self._next_queued()) is not None:
                    handed.append(queued)
                    self._known_free -= 1
            self._wake.notify_all()
        for solve in handed:
            self._submit_later(solve, 0.0)

    def _schedule_next_polls(self, solves: list[Solve], tick_at: float) -> None:
        """Next polls on the :func:`poll_spacing` schedule, from the tick's start; none past the budget."""
        with self._lock:
            for solve in solves:
                spacing = poll_spacing(solve.polls, solve.deadline - tick_at, self._paced_api)
                # No budget left: no more polls; the deadline ends the task.
                solve.next_poll = tick_at + (spacing if spacing is not None else solve.deadline - tick_at + 1.0)

    # --- results ------------------------------------------------------------------------------------
    def _success(self, solve: Solve, token: str) -> Outcome:
        return self._outcome(solve, "success", token=token)

    def _error(self, solve: Solve, error: str, error_class: str) -> Outcome:
        return self._outcome(solve, "error", error=error, error_class=error_class)

    def _outcome(
        self, solve: Solve, status: str, token: str | None = None, error: str | None = None, error_class: str = ""
    ) -> Outcome:
        finished = time.time()
        started = solve.task.enqueued_at if solve.task.enqueued_at is not None else solve.claimed_at
        latency = round(max(0.0, finished - started), 6)
        api_s = round(finished - solve.submitted_at, 6) if solve.submitted_at is not None else None
        result = Result(
            status=status,
            token=token,
            error=error,
            error_class=error_class if error is not None else None,
            id=solve.task.id,
            method=solve.task.method,
            worker=self.queue.worker_id,
            host=self.host,
            attempts=solve.requeues + 1,
            enqueued_at=solve.task.enqueued_at,
            claimed_at=round(solve.claimed_at, 6),
            finished_at=round(finished, 6),
            latency_seconds=latency,
            api_seconds=api_s,
            captcha_id=solve.captcha_id,
            resumed=True if solve.resumed else None,
        )
        event = Event(
            id=solve.task.id,
            status=status,
            error_class=error_class,
            latency_s=latency,
            api_s=api_s,
            worker=self.queue.worker_id,
            host=self.host,
            method=solve.task.method,
            ts=round(finished, 6),
        )
        return Outcome(solve.task.id, solve.raw, result, event)

    def _finish(self, done: list[tuple[Solve, Outcome]]) -> None:
        """Decide and write results; a solve already decided (e.g. by its deadline) is skipped."""
        with self._wake:
            decided = []
            for solve, outcome in done:
                if self._solves.get(solve.seq) is solve and solve.outcome is None:
                    solve.outcome = outcome
                    decided.append((solve, outcome))
            self._wake.notify_all()
        self._write(decided)

    def _write(self, done: list[tuple[Solve, Outcome]]) -> None:
        """Write decided results; on a Redis failure keep them held and retry, so no result is dropped."""
        if not done:
            return
        try:
            written = self.queue.finish_many(outcome for _, outcome in done)
        except (redis.DataError, ValueError, TypeError) as exc:
            # One outcome cannot be encoded (a bug upstream of validation): write the others one by one.
            if len(done) > 1:
                for item in done:
                    self._write([item])
                return
            log.error("could not write the result of a task (%s); dead-lettering it", type(exc).__name__)
            self._write_failed(done[0][0])
            return
        except redis.RedisError as exc:
            log.warning("could not write %d result(s) (%s); will retry", len(done), exc)
            with self._wake:
                # Still held (so never released as an orphan), their slots busy, until written.
                for solve, _ in done:
                    self._unwritten[solve.seq] = solve
                self._schedule_write_retry()
            return
        for (solve, outcome), wrote in zip(done, written, strict=True):
            if wrote:
                result = outcome.result
                self.stats.record_result(
                    result.ok,
                    outcome.event.error_class,
                    result.latency_seconds or 0.0,
                    result.api_seconds,
                    outcome.event.method,
                )
            else:
                self.stats.record_duplicate()
            self._let_go(solve)

    def _let_go(self, solve: Solve) -> None:
        """The task has left this process (result written, dead-lettered): forget it and free its slot."""
        with self._lock:
            if self._solves.get(solve.seq) is solve:
                del self._solves[solve.seq]
            self._unwritten.pop(solve.seq, None)
            self._unstored.pop(solve.seq, None)
        self._free(solve)

    @staticmethod
    def _free(solve: Solve) -> None:
        if solve.slot is not None:
            solve.slot.release()

    def _write_failed(self, solve: Solve) -> None:
        try:
            self.queue.deadletter(solve.raw, "ERROR_BAD_TASK: its result could not be written", read_task_id(solve.raw))
        except Exception:
            log.exception("could not dead-letter a payload; it stays in flight for the reaper")
        self.stats.record_result(False, "malformed", 0.0, None, "")
        self._let_go(solve)

    def _flush_unwritten(self, wait: bool = False) -> None:
        """Write again the results Redis refused; they stay held until written."""
        if not self._flush_lock.acquire(blocking=wait):
            return
        try:
            with self._lock:
                pending = [(s, s.outcome) for s in self._unwritten.values() if s.outcome is not None]
            self._write([(solve, outcome) for solve, outcome in pending if outcome is not None])
        finally:
            self._flush_lock.release()
