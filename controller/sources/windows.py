"""The windows a signal source keeps between reads, and the one way they become :class:`Signals`.

The Redis source and the simulator's source feed the same windows (arrivals and completions as counters, busy
slots as readings, finished tasks with their latency and solve time per method) and build their signals here, so
the simulator exercises the estimators the real controller uses and a new windowed signal is added once.
"""

from __future__ import annotations

from collections.abc import Mapping

from captcha_fleet.contract.windows import CounterWindow, FinishedTasksWindow

from ..settings import ControllerSettings
from ..signals import Signals
from . import method_solves
from .busy_window import BusyWindow


class SignalWindows:
    """Rates, percentiles and means over the configured windows, fed by one source."""

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.arrivals = CounterWindow(settings.rate_window_s)
        self.completions = CounterWindow(settings.rate_window_s)
        self.busy = BusyWindow(settings.rate_window_s)
        self.latency = FinishedTasksWindow(settings.latency_window_s)
        self.solves = method_solves.for_settings(settings)  # per method: what the queue model sizes by
        self.arrived: float | None = None  # the arrivals counter's last value
        self.epoch = 0  # bumped when the counters restart: a count from before does not subtract from one after

    def restart_counts(self) -> None:
        """The counters went back (a reset) or jumped: start the rates from a new baseline."""
        self.arrivals = CounterWindow(self.settings.rate_window_s)
        self.completions = CounterWindow(self.settings.rate_window_s)
        self.arrived, self.epoch = None, self.epoch + 1

    def count(self, now: float, arrived: float, completed: float) -> None:
        """The tasks that ever arrived and completed, as counters (their rates are the signals)."""
        if self.arrived is not None and arrived < self.arrived:
            self.epoch += 1  # the counter went back (the windows restart themselves)
        self.arrived = arrived
        self.arrivals.add(now, arrived)
        self.completions.add(now, completed)

    def finished(self, at: float, method: str, latency_s: float, solve_s: float) -> None:
        """One finished task: its end-to-end latency and its solve time under its CAPTCHA method."""
        self.latency.add(at, latency_s, solve_s)
        self.solves.add(at, method, solve_s)

    def signals(
        self,
        now: float,
        *,
        pending: int | None,
        in_flight: int,
        slots: int,
        busy: int,
        services: int,
        ages: Mapping[str, float],
        error_rates: Mapping[str, float] | None = None,
        host_error_rates: Mapping[str, float] | None = None,
        balance: float | None = None,
        burn_rate: float | None = None,
    ) -> Signals:
        """The signals at ``now``: what the source read, with the windows' rates, percentiles and means."""
        self.latency.trim(now)
        self.solves.observe(now)
        self.busy.add(now, busy)
        return Signals(
            now=now,
            pending=pending,
            in_flight=in_flight,
            slots=slots,
            busy=busy,
            services=services,
            arrival_rate=self.arrivals.rate(),
            completion_rate=self.completions.rate(),
            p95_latency_s=self.latency.latency(0.95),
            p50_latency_s=self.latency.latency(0.5),
            mean_solve_s=self.solves.mean(),
            p95_solve_s=self.solves.quantile(0.95),
            solve_by_method=self.solves.by_method(),
            completed_in_window=len(self.latency),
            mean_busy=self.busy.mean(),
            error_rates=dict(error_rates or {}),
            host_error_rates=dict(host_error_rates or {}),
            balance=balance,
            burn_rate=burn_rate,
            ages=dict(ages),
            arrived_count=self.arrived,
            count_epoch=self.epoch,
        )
