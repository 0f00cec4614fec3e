"""The worker service: one process that claims tasks while it has free slots and solves them.

Threads: a claimer (atomic claims while slots are free), the solve engine (HTTP submit pool and one batch
poller), and a heartbeat that publishes stats, reads the controller's target, reaps dead workers and
re-checks a fatal account error. Each has one job; none blocks another.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType

import redis

from captcha_fleet import __version__
from captcha_fleet.contract.api_client import CaptchaApi
from captcha_fleet.contract.api_errors import ApiError, ErrorClass
from captcha_fleet.contract.config import FleetConfig
from captcha_fleet.contract.log_redaction import redact_url
from captcha_fleet.contract.records import Heartbeat
from captcha_fleet.contract.redis_connect import connect, redis_settings
from captcha_fleet.contract.redis_failover import failures_seen, seconds_since_failure, tls_problem, worth_retrying

from .concurrency import SlotLimiter
from .metrics import WorkerMetrics
from .queue import TaskQueue
from .solver import SolveEngine
from .stats import WorkerStats

log = logging.getLogger(__name__)
CLAIM_BATCH = 64
# Exit code when a worker thread died: the supervisor (systemd Restart=on-failure, supervisord) restarts us.
EXIT_THREAD_DIED = 70
# How many heartbeat TTLs past its TTL the reaper waits for a silent worker, within redis.failover_s: with the
# default TTL (10 s) a live worker may be cut off for 20 s, past a Sentinel failover whose first vote split.
REAP_GRACE_TTLS = 1


def default_host_name() -> str:
    """``$CAPTCHA_FLEET_HOST`` or the machine's hostname."""
    return os.environ.get("CAPTCHA_FLEET_HOST") or socket.gethostname()


class WorkerService:
    """A running worker; ``run()`` blocks until it has drained after ``request_stop()`` or a signal."""

    def __init__(
        self,
        config: FleetConfig,
        client: redis.Redis | None = None,
        host: str | None = None,
        instance: str | None = None,
        slots: int | None = None,
    ) -> None:
        self.config = config
        self.host = host or default_host_name()
        self.instance = instance or os.environ.get("CAPTCHA_FLEET_INSTANCE") or str(os.getpid())
        self.worker_id = f"{self.host}:{self.instance}"
        # This process, as opposed to an earlier one restarted under the same name.
        self.process_id = f"{os.getpid()}:{uuid.uuid4().hex[:12]}"
        # A socket timeout so a partitioned Redis cannot hang a thread forever; longer than any BLMOVE.
        self.client = client or connect(config, socket_timeout=max(10.0, config.worker.claim_timeout_s + 5.0))
        self.queue = TaskQueue(self.client, config, self.worker_id)
        self.metrics = WorkerMetrics(self.worker_id, self.host, __version__)
        self.stats = WorkerStats(config.worker.latency_window, self.metrics)
        self.metrics_port: int | None = None
        self.fixed_slots = slots
        initial = self._clamp(slots if slots is not None else config.worker.initial_slots)
        # One burst of refusals counts as one decrease: refusals closer together than the back-off base.
        gap = config.api.backoff_base_s
        self.limiter = SlotLimiter(initial, min_decrease_gap_s=gap, recovery_s=30 * gap)
        api = config.api
        self.api = CaptchaApi(
            api.base,
            api.key,
            api.connect_timeout_s,
            api.read_timeout_s,
            pool_size=max(api.pool_connections, config.worker.submit_threads + 2),
            submit_read_timeout_s=api.submit_read_timeout_s,
        )
        self.api.observer = self.metrics.observe_request
        self.engine = SolveEngine(
            self.api,
            self.queue,
            self.limiter,
            self.stats,
            api,
            config.worker,
            self.host,
            on_fatal=self._on_fatal,
        )
        self.started_at = time.time()
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        self.fatal_error: str | None = None
        self._fatal_since = 0.0
        self._draining = False
        self._controller_target: int = initial
        self._host_draining = False
        self._threads: list[threading.Thread] = []
        self._heartbeat_stop = threading.Event()  # set only after the drain: heartbeats go on through it
        self.dead_threads: list[str] = []
        self.predecessor: str | None = None
        self._recovered = False
        self._reaper_waiting = False  # the reaper is holding off after our own Redis trouble (said once)
        self._beaten = False  # a heartbeat was written once: a later "not registered" means we were reaped
        self._config_error: str | None = None  # the TLS/credentials problem last said, so it is said once

    # --- lifecycle --------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT mean: drain, then exit 0."""

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("received %s: draining", signal.Signals(signum).name)
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def request_stop(self) -> None:
        """Begin the drain (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> int:
        """Serve until asked to stop, then drain; returns the exit code."""
        log.info(
            "worker %s starting: api=%s slots=%d version=%s",
            self.worker_id,
            redact_url(self.config.api.base),
            self.limiter.slots,
            __version__,
        )
        self._step("control", self._read_control)  # honour the controller's target from the very first claim
        self._note_predecessor()
        # Before our first heartbeat refreshes the key: even a crash loop faster than the TTL recovers them.
        self._recovered = self._recover_predecessor()
        self._publish_heartbeat()  # register before claiming anything, so the reaper can find us
        if self.config.worker.metrics_port:
            self.metrics_port = self.metrics.serve(self.config.worker.metrics_host, self.config.worker.metrics_port)
            log.info("metrics on http://%s:%d/metrics", self.config.worker.metrics_host, self.metrics_port)
        self.engine.start()
        for target, name in ((self._claim_loop, "claimer"), (self._heartbeat_loop, "heartbeat")):
            thread = threading.Thread(target=self._guarded(name, target), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        while not self._stop.wait(0.5):
            self._check_threads()
        self._check_threads()
        return self._drain()

    def _guarded(self, name: str, target: Callable[[], None]) -> Callable[[], None]:
        """``target`` run so that its death, whatever the cause, is recorded and ends the process."""

        def run() -> None:
            try:
                target()
            except BaseException:
                log.critical("worker thread %s died; the process exits for its supervisor to restart it", name)
                log.exception("%s died of", name)
                self._thread_died(name)

        return run

    def _check_threads(self) -> None:
        """A thread that ended while we are not stopping died (e.g. the batch poller, outside our guard)."""
        if self._stop.is_set():
            return
        threads = [*self._threads, *self.engine.threads]
        for thread in threads:
            if not thread.is_alive() and thread.name not in self.dead_threads:
                log.critical("worker thread %s is gone; exiting for the supervisor to restart us", thread.name)
                self._thread_died(thread.name)

    def _thread_died(self, name: str) -> None:
        with self._state_lock:
            if name not in self.dead_threads:
                self.dead_threads.append(name)
        self._stop.set()
        self._step("heartbeat", self._publish_heartbeat)  # say so at once: state "failed"

    def _drain(self) -> int:
        with self._state_lock:
            self._draining = True
        self.limiter.set_paused(True)
        failed = bool(self.dead_threads)
        # With a dead thread the solves may never finish here: hand them back at once instead of waiting.
        deadline = 0.0 if failed else self.config.worker.drain_timeout_s
        log.info("draining: %d solve(s) in flight, waiting up to %.0fs", self.limiter.busy, deadline)
        finished = self.limiter.wait_idle(deadline)
        self.engine.stop()
        claimer = [t for t in self._threads if t.name == "claimer"]
        for thread in claimer:
            thread.join(timeout=self.config.worker.claim_timeout_s + 5)
        # Heartbeats go on until everything is handed back, so no peer reaps a worker that is still draining.
        self._heartbeat_stop.set()
        for thread in self._threads:
            thread.join(timeout=self.config.worker.claim_timeout_s + 5)
        released = 0
        try:
            released = self.queue.release_all()
            if failed:
                self._publish_heartbeat()  # leave the "failed" heartbeat to expire, for status and alerts
            else:
                self.queue.unregister(self.process_id)
        except redis.RedisError as exc:
            log.error("could not release in-flight tasks (%s); the reaper will requeue them", exc)
        if not finished or released:
            log.warning("drain deadline passed: returned %d task(s) to the queue", released)
        self.api.close()
        log.info("worker %s stopped: %s", self.worker_id, self.stats.snapshot())
        if failed:
            log.error("worker %s exits %d: thread(s) died: %s", self.worker_id, EXIT_THREAD_DIED, self.dead_threads)
            return EXIT_THREAD_DIED
        return 0

    # --- claiming ---------------------------------------------------------------------------------
    def _claim_loop(self) -> None:
        """Claim while slots are free; an exception from one round is logged and the next round runs."""
        failures = 0
        recovered = self._recovered
        reconcile = False
        while not self._stop.is_set():
            if not recovered:
                # Before the first claim: what an earlier process of our name left in our in-flight list.
                recovered = self._recover_predecessor()
                if not recovered:
                    self._stop.wait(0.5)
                    continue
            if reconcile:
                reconcile = not self._release_orphans()
            try:
                failures, reconcile_now = self._claim_round(failures)
            except Exception:
                failures += 1
                log.exception("claim round failed; claiming on")
                reconcile_now = True
                self._stop.wait(min(5.0, 0.1 * 2**failures))
            reconcile = reconcile or reconcile_now

    def _claim_round(self, failures: int) -> tuple[int, bool]:
        """One claim of up to the free slots; returns the failure count and whether to look for orphans."""
        free = self.limiter.wait_free(timeout_s=0.5)
        if free <= 0 or self._stop.is_set():
            return failures, False
        failures_before = failures_seen(self.client)
        try:
            claimed = self.queue.claim(min(free, CLAIM_BATCH), self.config.worker.claim_timeout_s)
        except redis.RedisError as exc:
            # The claim may have happened with its reply lost: look for such orphans once Redis answers.
            self._say_redis_error("claim", exc)
            self._stop.wait(min(5.0, 0.1 * 2 ** (failures + 1)))  # a SIGTERM ends the pause
            return failures + 1, True
        slots = self.limiter.take(len(claimed))
        self.metrics.claimed.inc(len(claimed))
        for index, (item, slot) in enumerate(zip(claimed, slots, strict=True)):
            try:
                self.engine.accept(item, slot)
            except redis.RedisError as exc:
                # The payload is still in our in-flight list; the reaper or our drain requeues it.
                log.warning("could not start a claimed task (%s)", exc)
                slot.release()
            except BaseException:
                for rest in slots[index:]:  # the rest stays in our list: orphans
                    rest.release()
                raise
        # A claim retried inside the client may have moved tasks whose reply was lost (a cut link): look for them.
        return 0, failures_seen(self.client) != failures_before

    def _recover_predecessor(self) -> bool:
        """Return to the queue what an earlier process of this name left in flight; True when done.

        systemd and supervisord restart a crashed worker under the same instance name, so its heartbeat
        key may never lapse and the reaper would never act. Each returned task counts as a failed attempt
        (its worker died) and keeps its stored CAPTCHA id, so whoever claims it resumes polling instead of
        paying again.
        """
        try:
            moved = self.queue.requeue_worker(self.worker_id, count_attempt=True)
        except redis.RedisError as exc:
            log.warning("could not check for an earlier process's tasks (%s); retrying", exc)
            return False
        if moved:
            log.warning(
                "an earlier process of %s (%s) left %d task(s) in flight: returned them to the queue",
                self.worker_id,
                self.predecessor or "unknown",
                moved,
            )
        return True

    def _note_predecessor(self) -> None:
        """Remember which earlier process of our name last beat (before our own first heartbeat)."""
        try:
            self.predecessor = self.queue.previous_process()
        except redis.RedisError:
            self.predecessor = None
        if self.predecessor is not None:
            log.info("restarted under the name %s (previous process %s)", self.worker_id, self.predecessor)

    def _release_orphans(self) -> bool:
        """Return to the queue what sits in our in-flight list but not in this process; True when done."""
        try:
            orphans = self.queue.orphans(self.engine.held_payloads())
            released = sum(self.queue.release(raw) for raw in orphans)
        except redis.RedisError:
            return False
        if released:
            log.warning("returned %d claimed task(s) whose claim reply was lost to the queue", released)
        return True

    # --- heartbeat, control and housekeeping -----------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        """Heartbeat, control, fatal re-check and reaper, each step on its own: one failing skips only itself."""
        interval = self.config.worker.heartbeat_interval_s
        next_reap = time.monotonic()
        while not self._heartbeat_stop.wait(interval):
            self._step("heartbeat", self._publish_heartbeat)
            if not self._stop.is_set():
                self._step("control", self._read_control)
            if self.fatal_error is not None:
                self._step("fatal re-check", self._recheck_fatal)
            if time.monotonic() >= next_reap:
                next_reap = time.monotonic() + self.config.worker.reaper_interval_s
                self._step("reaper", self._reap)

    def _reap(self) -> None:
        # A peer silent for its TTL may be alive and waiting out a failover: give it that long too, but at most
        # REAP_GRACE_TTLS more TTLs (a short TTL asks for a dead worker's tasks back quickly).
        ttl = self.config.worker.heartbeat_ttl_s
        silent_s = ttl + min(redis_settings(self.config).failover_s, REAP_GRACE_TTLS * ttl)
        # Silence is measured against a Redis we could reach: if our own commands failed within silent_s (a
        # failover, a stalled primary, a second failover on a loaded machine), our peers were likely cut off as
        # long, and the beats they wrote may have been lost with the old primary. Judge them once we have been
        # connected for silent_s ourselves.
        own_trouble_s = seconds_since_failure(self.client)
        if own_trouble_s is not None and own_trouble_s < silent_s:
            if not self._reaper_waiting:
                log.info("reaper waits: our own Redis commands failed %.1f s ago", own_trouble_s)
            self._reaper_waiting = True
            return
        self._reaper_waiting = False
        try:
            self.queue.reap(lock_ttl_s=max(5.0, self.config.worker.reaper_interval_s * 2), silent_s=silent_s)
        except redis.RedisError as exc:
            log.warning("reaper failed: %s", exc)

    @staticmethod
    def _step(name: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception:
            log.exception("%s step failed; carrying on", name)

    def _read_control(self) -> None:
        try:
            target, host_draining = self.queue.read_target(self.host)
        except redis.RedisError as exc:
            self._say_redis_error("reading the slot target", exc)
            return
        if self.fixed_slots is None and target is not None:
            self._controller_target = self._clamp(target)
        if host_draining != self._host_draining:
            log.info("host %s draining: %s", self.host, host_draining)
        self._host_draining = host_draining
        effective = 0 if host_draining else self._controller_target
        if effective != self.limiter.target:
            log.info("slot target %d -> %d", self.limiter.target, effective)
            self.limiter.set_target(effective)

    def _clamp(self, target: int) -> int:
        if target <= 0:
            return 0  # 0 always means drain, whatever the minimum
        return max(self.config.worker.min_slots, min(self.config.worker.max_slots, target))

    def _on_fatal(self, code: str) -> None:
        with self._state_lock:
            if self.fatal_error is None:
                log.error("fatal account error %s: stopped claiming; tasks stay queued", code)
            self.fatal_error = code
            self._fatal_since = time.monotonic()
        self.limiter.set_paused(True)

    def _recheck_fatal(self) -> None:
        if time.monotonic() - self._fatal_since < self.config.api.fatal_recheck_s:
            return
        try:
            self.api.balance()
        except ApiError as exc:
            if exc.error_class is ErrorClass.FATAL:
                self._fatal_since = time.monotonic()
                return
        with self._state_lock:
            log.info("account error %s cleared: claiming again", self.fatal_error)
            self.fatal_error = None
            draining = self._draining
        if not draining:
            self.limiter.set_paused(False)

    def state(self) -> str:
        """running, draining, fatal or failed (a worker thread died), as the controller sees it."""
        if self.dead_threads:
            return "failed"
        if self.fatal_error is not None:
            return "fatal"
        if self._draining or self.limiter.target == 0:
            return "draining"
        return "running"

    def heartbeat(self) -> Heartbeat:
        """The stats the controller reads (docs/internals.md)."""
        return Heartbeat(
            id=self.worker_id,
            host=self.host,
            instance=self.instance,
            pid=os.getpid(),
            process=self.process_id,
            dead_threads=list(self.dead_threads),
            version=__version__,
            started_at=round(self.started_at, 3),
            ts=round(time.time(), 3),
            state=self.state(),
            target=self.limiter.target,
            slots=self.limiter.slots,
            busy=self.limiter.busy,
            fatal_error=self.fatal_error,
            http_requests=dict(self.api.requests_sent),
            **self.stats.snapshot(),
        )

    def _publish_heartbeat(self) -> None:
        self.metrics.in_flight.set(self.limiter.busy)
        self.metrics.slots.set(self.limiter.slots)
        self.metrics.target.set(self.limiter.target)
        self.metrics.fatal.set(1 if self.fatal_error is not None else 0)
        try:
            registered = self.queue.heartbeat(self.heartbeat(), self.config.worker.heartbeat_ttl_s)
        except redis.RedisError as exc:
            self._say_redis_error("heartbeat", exc)
            return
        if not registered and self._beaten:
            # Our peers reaped us while we could not reach Redis: what we held went back to the queue. The
            # result write keeps the first answer only and a resumed task polls the CAPTCHA we stored.
            log.warning("worker %s had been reaped while cut off from Redis; registered again", self.worker_id)
        self._beaten = True

    def _say_redis_error(self, what: str, exc: redis.RedisError) -> None:
        """Log a Redis failure; one that waiting cannot fix (TLS, password) as an error, once, saying what to fix."""
        if worth_retrying(exc):
            log.warning("%s failed: %s", what, exc)
            return
        problem = tls_problem(exc) or f"Redis refused our credentials ({type(exc).__name__})"
        if problem != self._config_error:
            self._config_error = problem
            log.error("cannot use Redis: %s: check redis_url and the redis.tls_* settings (%s)", problem, exc)
