"""Every Redis key the fleet uses, in one place, so the wire contract is readable at a glance.

The two seed-compatible keys are ``{prefix}:tasks`` (a list of JSON tasks, RPUSH by producers) and
``{prefix}:results`` (a hash: task id -> JSON result). Everything else is the fleet's own bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "captcha"


@dataclass(frozen=True)
class Keys:
    """Key names under one configurable prefix."""

    prefix: str = DEFAULT_PREFIX

    # --- seed-compatible wire format -------------------------------------------------------
    @property
    def tasks(self) -> str:
        """Pending tasks (list). Producers RPUSH, workers claim from the left."""
        return f"{self.prefix}:tasks"

    @property
    def results(self) -> str:
        """Results (hash): task id -> JSON ``{"status": ..., ...}``."""
        return f"{self.prefix}:results"

    # --- reliability -----------------------------------------------------------------------
    def inflight(self, worker_id: str) -> str:
        """Tasks a worker has claimed and not yet finished (list of raw payloads)."""
        return f"{self.prefix}:inflight:{worker_id}"

    def heartbeat(self, worker_id: str) -> str:
        """A worker's liveness key (JSON stats) with a TTL; its absence means the worker is dead."""
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def workers(self) -> str:
        """Registry of worker ids (sorted set scored by last heartbeat), so the reaper can find the dead."""
        return f"{self.prefix}:workers"

    @property
    def attempts(self) -> str:
        """Hash: task id -> number of times the task was requeued after its worker died."""
        return f"{self.prefix}:attempts"

    @property
    def deadletter(self) -> str:
        """List of JSON records for tasks that kept killing workers or could not be parsed."""
        return f"{self.prefix}:deadletter"

    @property
    def captcha_ids(self) -> str:
        """Hash: task id -> JSON ``{"captcha_id", "submitted_at", "worker", "polls"}`` (records.StoredCaptcha):
        a requeued task resumes polling, at the schedule it had."""
        return f"{self.prefix}:captcha_ids"

    @property
    def holders(self) -> str:
        """Hash: task id -> the worker holding it, from its claim until its result (``worker/lua/hold.lua``): a
        second copy of a held task (a producer's submit retried after a lost reply) is dropped, not paid again."""
        return f"{self.prefix}:holders"

    @property
    def reaper_lock(self) -> str:
        """Lock (SET NX PX) so one reaper at a time requeues dead workers' tasks."""
        return f"{self.prefix}:lock:reaper"

    def notify(self, task_id: str) -> str:
        """Per-task list a producer BLPOPs to wait for the result without polling."""
        return f"{self.prefix}:notify:{task_id}"

    def done(self, task_id: str) -> str:
        """Per-task stream the finish script writes once, with a TTL; waiters XREAD BLOCK it without consuming it
        (so one waiter cannot take another's wake-up, and the producer's ACL user needs no write)."""
        return f"{self.prefix}:done:{task_id}"

    @property
    def results_expiry(self) -> str:
        """Sorted set: task id -> unix time its result may be deleted (retention)."""
        return f"{self.prefix}:results:expiry"

    @property
    def events(self) -> str:
        """Capped stream of finished tasks (latency, status, error class, host) for the controller."""
        return f"{self.prefix}:events"

    @property
    def completed_total(self) -> str:
        """Counter of results written (success and error) since the queue was created."""
        return f"{self.prefix}:stats:completed"

    # --- control ---------------------------------------------------------------------------
    def target(self, worker_id: str) -> str:
        """Concurrency target (slots) the controller sets for one worker."""
        return f"{self.prefix}:target:{worker_id}"

    @property
    def default_target(self) -> str:
        """Concurrency target for workers without their own target key."""
        return f"{self.prefix}:target:default"

    def stopped(self, worker_id: str) -> str:
        """A worker's note that it stopped cleanly (its drain ended): the controller replaces a service stopped
        outside it at its next look instead of waiting out a failover's grace for the missing heartbeat."""
        return f"{self.prefix}:stopped:{worker_id}"

    def host_draining(self, host: str) -> str:
        """Flag: every worker on this host stops claiming (rolling update, decommission)."""
        return f"{self.prefix}:draining:{host}"

    def host_lock(self, host: str) -> str:
        """Lock (SET NX PX, owner token): one of scale run, rolling update, decommission works on a host at a time."""
        return f"{self.prefix}:hostlock:{host}"

    @property
    def controller_leader(self) -> str:
        """Leader lock (SET NX PX) so exactly one controller acts."""
        return f"{self.prefix}:controller:leader"

    @property
    def controller_state(self) -> str:
        """Controller state (hash) that survives a restart or failover."""
        return f"{self.prefix}:controller:state"

    @property
    def hosts(self) -> str:
        """Hash: host -> JSON of what the controller's actuator knows (reachable, draining, services)."""
        return f"{self.prefix}:controller:hosts"

    @property
    def decisions(self) -> str:
        """Bounded list of the controller's decisions, newest first."""
        return f"{self.prefix}:controller:decisions"
