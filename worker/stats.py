"""Per-worker counters and latency percentiles, published in the heartbeat for the controller."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from captcha_fleet.contract.api_errors import ERROR_KINDS
from captcha_fleet.contract.windows import LastLatencies

from .metrics import WorkerMetrics


class WorkerStats:
    """Thread-safe counters of one worker process."""

    def __init__(self, latency_window: int, metrics: WorkerMetrics | None = None) -> None:
        self._lock = threading.Lock()
        self.metrics = metrics
        self.completed = 0
        self.succeeded = 0
        self.duplicates = 0
        self.failed: Counter[str] = Counter()
        self.api_errors: Counter[str] = Counter()
        self.latency = LastLatencies(latency_window)
        self.api_latency = LastLatencies(latency_window)

    def record_result(
        self, ok: bool, error_class: str, latency_s: float, api_s: float | None, method: str = ""
    ) -> None:
        """Count one result this worker wrote."""
        if self.metrics is not None:
            self.metrics.observe_result(method, ok, error_class, latency_s, api_s)
        with self._lock:
            self.completed += 1
            if ok:
                self.succeeded += 1
            else:
                self.failed[error_class] += 1
            self.latency.add(latency_s)
            if api_s is not None:
                self.api_latency.add(api_s)

    def record_duplicate(self) -> None:
        """Count a result that another worker had already written."""
        with self._lock:
            self.duplicates += 1

    def record_api_error(self, error_class: str) -> None:
        """Count one error answer from the API, by class."""
        with self._lock:
            self.api_errors[error_class] += 1

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain data for the heartbeat."""
        with self._lock:
            return {
                "completed": self.completed,
                "succeeded": self.succeeded,
                "duplicates": self.duplicates,
                "failed": {k: self.failed.get(k, 0) for k in ("task", "deadline", "malformed", "deadletter")},
                "api_errors": {k: self.api_errors.get(k, 0) for k in ERROR_KINDS},
                "latency": self.latency.summary(),
                "api_latency": self.api_latency.summary(),
            }
