"""Prometheus metrics of one worker service, on their own registry and HTTP port (off unless configured).

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` base units); the full list, with
the controller's, is in docs/metrics.md.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

# The ``method`` label takes only the methods of the table (captcha_fleet.contract.methods); anything a producer
# invents is counted as "other", so a stream of made-up methods cannot grow the number of series without bound.
from captcha_fleet.contract.methods import method_label

# Seconds buckets from sub-second (compressed sandbox time) to past the 180 s deadline.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300)


class WorkerMetrics:
    """The worker's counters, gauges and histograms."""

    def __init__(self, worker_id: str, host: str, version: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Info("captcha_fleet_worker", "Identity of this worker service.", registry=r).info(
            {"worker": worker_id, "host": host, "version": version}
        )
        self.claimed = Counter("captcha_fleet_tasks_claimed_total", "Tasks claimed from the queue.", registry=r)
        self.solved = Counter(
            "captcha_fleet_tasks_solved_total", "Tasks that got a success result.", ["method"], registry=r
        )
        self.failed = Counter(
            "captcha_fleet_tasks_failed_total",
            "Tasks that got an error result, by error class (task, deadline, malformed, deadletter).",
            ["method", "error_class"],
            registry=r,
        )
        self.in_flight = Gauge("captcha_fleet_tasks_in_flight", "Tasks claimed and not yet finished.", registry=r)
        self.slots = Gauge("captcha_fleet_worker_slots", "Slots in effect (target cut by AIMD).", registry=r)
        self.target = Gauge("captcha_fleet_worker_target_slots", "Slots the controller asked for.", registry=r)
        self.fatal = Gauge("captcha_fleet_worker_fatal", "1 while a fatal account error stops claiming.", registry=r)
        self.solve_seconds = Histogram(
            "captcha_fleet_solve_duration_seconds",
            "API time: submit to answer seen.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.latency_seconds = Histogram(
            "captcha_fleet_task_latency_seconds",
            "End to end: enqueue to result.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.api_requests = Counter(
            "captcha_fleet_api_requests_total",
            "HTTP requests to the CAPTCHA API by endpoint (in, res, balance, report) and outcome.",
            ["endpoint", "outcome"],
            registry=r,
        )

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_address[1])

    def observe_result(self, method: str, ok: bool, error_class: str, latency_s: float, api_s: float | None) -> None:
        """Count one result this worker wrote."""
        method = method_label(method)
        if ok:
            self.solved.labels(method).inc()
        else:
            self.failed.labels(method, error_class or "task").inc()
        self.latency_seconds.labels(method).observe(latency_s)
        if api_s is not None:
            self.solve_seconds.labels(method).observe(api_s)

    def observe_request(self, endpoint: str, outcome: str) -> None:
        """Count one HTTP request to the API."""
        self.api_requests.labels(endpoint, outcome).inc()
