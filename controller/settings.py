"""The ``controller:`` section of ``fleet.yml``, typed and checked, with the seed article's thresholds.

Capacity is counted in *slots* (one in-flight solve, the seed's "worker"); a worker *service* is one
``captcha-fleet worker`` process holding up to ``slots_per_service`` slots. One process holds 2,000 solves
in 66 MiB, so a service holds the whole plan: capacity grows inside running services (thread targets, a
Redis write) and new processes are for failure domains and host capacity, not for every ten slots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from captcha_fleet.contract.config import ConfigError, FleetConfig
from captcha_fleet.contract.sections import parse_section

# What the fleet does while the balance is below ``balance_floor``: take nothing new, or keep min_slots solving.
BELOW_FLOOR_STOP = "stop"
BELOW_FLOOR_KEEP_MIN = "keep_min"
BELOW_FLOOR_CHOICES = (BELOW_FLOOR_STOP, BELOW_FLOOR_KEEP_MIN)


@dataclass(frozen=True)
class ControllerSettings:
    """Every knob of the controller; defaults are the seed's thresholds where it has one."""

    # --- loop -------------------------------------------------------------------------------
    interval_s: float = 10.0  # evaluation interval: scale up at most this late
    quick_check_s: float = 1.0  # look at the queue this often between evaluations; a jump evaluates now and twice more
    scale_down_window_s: float = 180.0  # scale down to the highest recommendation over this window
    scale_down_hysteresis: float = 0.25  # ... and only when that is this fraction below the current size
    # Once the queue has stayed empty this long (over a solve time: what was claimed when it emptied is
    # done) and bursts do not recur within scale_down_window_s, scale down to the highest recommendation over
    # this shorter window: the burst is over, its slots sit idle. 60 s left spike, flash-crowd and short at
    # 1.21-1.30 x the oracle live; 30 s left short at 1.22. 20 s: short 1.12 -> 1.09 x in the simulator,
    # flaps unchanged on every built-in trace (the release floor, not this window, keeps arrivals served).
    release_window_s: float = 20.0
    # ... and only when that frees at least this many slots (10 slots x the <= 120 s left of the long window
    # is <= 1,200 slot-s; in the simulator 5 flapped more than keda:2 on short and sawtooth, 20 held the
    # periodic load above the best static fleet).
    release_min_slots: int = 10
    scale_up_tolerance: float = 0.1  # scale up only when the model asks this fraction above the current size
    scale_up_headroom: float = 0.15  # when scaling up anyway, add this fraction so the next rise waits
    # --- capacity bounds --------------------------------------------------------------------
    plan_threads: int = 100  # the CaptchaAI plan's concurrent threads: solves beyond are refused
    # Slots may exceed the plan's threads by this fraction: a slot waiting for its answer to be seen holds no
    # provider thread (mean detection ~1 s of a ~16.5 s slot cycle at >= 50 in flight, plus margin); the
    # worker's AIMD on ERROR_NO_SLOT_AVAILABLE absorbs the excess without failing a task.
    slots_over_plan: float = 0.1
    min_slots: int = 2
    max_slots: int = 1000
    slots_per_service: int = 250
    min_services: int = 1
    max_services: int = 100
    service_headroom: float = 0.2  # spare services (slots at target 0) so a rise needs no start-up
    service_startup_s: float = 20.0  # time from "start a service" to its first claim
    # --- queue model ------------------------------------------------------------------------
    p95_target_s: float = 60.0  # end-to-end latency the fleet promises
    drain_fraction: float = 1.0  # share of the queueing budget (P95 target - P95 solve) the backlog may use
    keep_up_fraction: float = 0.8  # never below this fraction of arrival rate x solve time
    solve_time_prior_s: float = 15.0  # solve time assumed before any task finished
    # --- the seed's thresholds (triggers and guard rails) ------------------------------------
    queue_up: int = 20
    queue_down: int = 5
    utilization_up_pct: float = 80.0
    utilization_down_pct: float = 20.0
    p95_up_s: float = 60.0
    p95_down_s: float = 20.0
    error_act_pct: float = 5.0
    error_stable_pct: float = 1.0
    balance_floor: float = 1.0  # $: below it, never scale up
    # Below the floor: "stop" (the default) sets every target to 0, so workers submit nothing new and the queue
    # keeps its tasks until the account is topped up; "keep_min" keeps min_slots solving. Stop is the safe
    # default for an operator who pays per solve: the floor is the money they said not to spend, and a task
    # that waits is not lost, while one solved below the floor is paid for (issue 21: 0.19 USD in 150 s).
    below_balance_floor: str = "stop"
    # --- signal hygiene ---------------------------------------------------------------------
    stale_after_s: float = 30.0  # an essential signal older than this allows scale-up only
    stuck_after_s: float = 60.0  # busy workers completing nothing for this long: stop scale-up
    rate_window_s: float = 60.0
    latency_window_s: float = 120.0
    balance_cache_s: float = 60.0  # getbalance at most this often
    # --- process ----------------------------------------------------------------------------
    leader_ttl_s: float = 30.0
    decisions_max: int = 1000
    drain_timeout_s: float = 120.0  # stop a draining service after this even if it still reports busy
    # A managed service with no heartbeat this long after it was asked to start (and not being started by the
    # actuator now) is lost: stopped outside the controller, crash-looping or hung. Once its heartbeat has also
    # been missing for missing_after_s (a Redis failover can outlast a heartbeat's TTL), it is replaced.
    start_timeout_s: float = 60.0
    missing_after_s: float = 15.0
    host_name: str = ""  # the local actuator's host name (default: this machine's hostname)
    instances_per_host: int = 20
    metrics_port: int = 0  # Prometheus /metrics; 0 = off
    metrics_host: str = "127.0.0.1"
    # --actuator none: the worker ids (comma-separated fnmatch patterns, e.g. "pod-*:*") it may count and steer;
    # "" = any, each bounded by the target it wrote and the plan. With an actuator: the services it manages.
    worker_ids: str = ""

    @property
    def slot_ceiling(self) -> int:
        """The queue model's ceiling: the plan's threads plus what waiting for answers holds, within max_slots."""
        return min(self.max_slots, self.plan_slots)

    @property
    def max_effective_slots(self) -> int:
        """The hard ceiling: configured maximum, and never more than the plan's threads."""
        return min(self.max_slots, self.plan_threads)

    @property
    def plan_slots(self) -> int:
        """Slots the plan allows: its threads plus ``slots_over_plan`` (answers waiting to be seen hold no thread)."""
        return math.floor(self.plan_threads * (1.0 + self.slots_over_plan) + 1e-9)

    @property
    def service_slots(self) -> int:
        """Slots the allowed services hold: ``max_services`` x ``slots_per_service``."""
        return self.max_services * max(1, self.slots_per_service)

    def services_for(self, slots: int) -> int:
        """Services needed to hold ``slots`` with the configured headroom, within the service bounds."""
        per = max(1, self.slots_per_service)
        wanted = math.ceil(slots * (1.0 + self.service_headroom) / per)
        return max(self.min_services, min(self.max_services, wanted))


def controller_settings(data: Mapping[str, Any] | None, where: str = "controller") -> ControllerSettings:
    """Parse and cross-check the section; errors name the field."""
    settings = parse_section(ControllerSettings, data, where)
    _check_capacity(settings, where)
    _check_thresholds(settings, where)
    _check_timing(settings, where)
    return settings


def _check_capacity(settings: ControllerSettings, where: str) -> None:
    """The plan, slot and service bounds agree with each other."""
    if settings.slots_over_plan > 1:
        raise ConfigError(f"{where}.slots_over_plan: expected a fraction of the plan's threads, at most 1")
    if settings.slots_per_service < 1:
        raise ConfigError(f"{where}.slots_per_service: must be at least 1")
    if settings.plan_threads < 1:
        raise ConfigError(f"{where}.plan_threads: must be at least 1")
    if settings.min_slots > settings.max_effective_slots:
        raise ConfigError(
            f"{where}.min_slots ({settings.min_slots}) exceeds max_slots/plan_threads ({settings.max_effective_slots})"
        )
    if settings.min_services > settings.max_services:
        raise ConfigError(f"{where}.min_services exceeds {where}.max_services")
    if settings.min_services < 0 or settings.max_services < 1:
        raise ConfigError(f"{where}.min_services/max_services: expected 0 <= min_services, 1 <= max_services")
    if settings.min_slots > settings.service_slots:
        raise ConfigError(
            f"{where}.min_slots ({settings.min_slots}) exceeds what max_services x slots_per_service hold "
            f"({settings.service_slots})"
        )
    if settings.min_slots < 0:
        raise ConfigError(f"{where}.min_slots: must not be negative")
    if settings.below_balance_floor not in BELOW_FLOOR_CHOICES:
        choices = " or ".join(BELOW_FLOOR_CHOICES)
        raise ConfigError(f"{where}.below_balance_floor: expected {choices}, got {settings.below_balance_floor!r}")


def _check_thresholds(settings: ControllerSettings, where: str) -> None:
    """Each pair of the seed's thresholds has its "down" at or below its "up"."""
    if settings.queue_down > settings.queue_up:
        raise ConfigError(f"{where}.queue_down must not exceed {where}.queue_up")
    if settings.utilization_down_pct > settings.utilization_up_pct or settings.utilization_up_pct > 100:
        raise ConfigError(f"{where}.utilization_*_pct: expected down <= up <= 100")
    if settings.p95_down_s > settings.p95_up_s:
        raise ConfigError(f"{where}.p95_down_s must not exceed {where}.p95_up_s")
    if settings.error_stable_pct > settings.error_act_pct:
        raise ConfigError(f"{where}.error_stable_pct must not exceed {where}.error_act_pct")


def _check_timing(settings: ControllerSettings, where: str) -> None:
    """The loop's intervals, windows and fractions are in range."""
    if settings.interval_s <= 0:
        raise ConfigError(f"{where}.interval_s: must be positive")
    if not 0 < settings.drain_fraction <= 1:
        raise ConfigError(f"{where}.drain_fraction: expected a number in (0, 1]")
    if settings.release_window_s <= 0:
        raise ConfigError(f"{where}.release_window_s: must be positive")
    if settings.scale_down_hysteresis >= 1:
        raise ConfigError(f"{where}.scale_down_hysteresis: expected a fraction below 1")
    if settings.leader_ttl_s <= settings.interval_s:
        raise ConfigError(f"{where}.leader_ttl_s must be longer than {where}.interval_s")
    if settings.start_timeout_s <= 0 or settings.missing_after_s < 0:
        raise ConfigError(f"{where}.start_timeout_s must be positive and {where}.missing_after_s not negative")
    if settings.decisions_max < 1:
        raise ConfigError(f"{where}.decisions_max: must be at least 1")


def settings_from_config(config: FleetConfig) -> ControllerSettings:
    """The controller settings of a loaded ``fleet.yml``."""
    return controller_settings(config.section("controller"))
