"""Prometheus metrics of the controller (docs/metrics.md): the signals it read and the decisions it made.

Every controller serves them, leader or standby; ``captcha_fleet_controller_leader`` says which one acts,
so an alert on ``max(captcha_fleet_controller_leader) == 0`` finds a fleet with no brain.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from .signals import ERROR_CLASSES, Signals
from .strategies.base import Decision


class ControllerMetrics:
    """Gauges for the signals, a counter of decisions by rule."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, list(labels), registry=r)

        self.leader = gauge("captcha_fleet_controller_leader", "1 on the controller that holds the leader lock.")
        self.pending = gauge("captcha_fleet_queue_pending", "Tasks waiting in the queue.")
        self.in_flight = gauge("captcha_fleet_queue_in_flight", "Tasks claimed by workers, no result yet.")
        self.backlog = gauge("captcha_fleet_backlog", "Pending plus in-flight tasks.")
        self.arrival_rate = gauge("captcha_fleet_arrival_rate", "Tasks arriving per second.")
        self.completion_rate = gauge("captcha_fleet_completion_rate", "Results written per second.")
        self.p95 = gauge("captcha_fleet_latency_p95_seconds", "End-to-end P95 over the latency window.")
        self.utilization = gauge("captcha_fleet_worker_utilization_ratio", "Busy slots / slots, all workers.")
        self.error_rate = gauge(
            "captcha_fleet_error_rate_ratio", "Share of API answers in error, by class.", ("error_class",)
        )
        self.desired = gauge("captcha_fleet_concurrency_desired", "Slots the policy asks for.")
        self.actual = gauge("captcha_fleet_concurrency_actual", "Slots the live workers have.")
        self.workers = gauge("captcha_fleet_workers_live", "Workers with a fresh heartbeat.")
        self.balance = gauge("captcha_fleet_account_balance", "Account balance from getbalance.")
        self.burn_rate = gauge("captcha_fleet_account_burn_rate", "Balance spent per second.")
        self.decisions = Counter(
            "captcha_fleet_decisions_total", "Decisions by the rule that fired.", ["rule"], registry=r
        )
        # Untrusted input (DESIGN.md, trust boundaries): alert when either is above zero.
        self.untrusted = Counter(
            "captcha_fleet_controller_untrusted_values_total",
            "Heartbeat, event and counter values skipped as implausible, by source and reason.",
            ["source", "reason"],
            registry=r,
        )
        self.unknown_workers = gauge(
            "captcha_fleet_controller_unknown_workers",
            "Live heartbeats under worker ids the controller does not manage: not counted, never steered.",
        )

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` from a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_address[1])

    def observe(self, decision: Decision) -> None:
        """Record one evaluation: its inputs and the rule that fired."""
        s: Signals = decision.signals
        self.decisions.labels(decision.rule).inc()
        self.desired.set(decision.desired_slots)
        self.actual.set(s.slots)
        self.workers.set(s.services)
        _set(self.pending, s.pending)
        _set(self.in_flight, s.in_flight)
        _set(self.backlog, s.backlog)
        _set(self.arrival_rate, s.arrival_rate)
        _set(self.completion_rate, s.completion_rate)
        _set(self.p95, s.p95_latency_s)
        _set(self.utilization, s.utilization)
        _set(self.balance, s.balance)
        _set(self.burn_rate, s.burn_rate)
        for error_class in ERROR_CLASSES:
            self.error_rate.labels(error_class).set(s.error_rates.get(error_class, 0.0))

    def observe_untrusted(self, unknown_workers: int, rejected: Mapping[tuple[str, str], int]) -> None:
        """Record one read's unknown workers and the values it skipped."""
        self.unknown_workers.set(unknown_workers)
        for (source, reason), count in rejected.items():
            self.untrusted.labels(source, reason).inc(count)


def _set(gauge: Gauge, value: float | None) -> None:
    """Unmeasured signals keep their last value: a gap in Redis must not look like a quiet fleet."""
    if value is not None:
        gauge.set(value)
