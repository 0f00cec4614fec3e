"""The fleet settings for a replay in compressed time: every timing scaled by the same factor.

A replay at ``time_scale`` 0.05 runs 20 trace seconds per real second: the sandbox solves 20x faster, so every
API timing (first poll, interval, deadline, back-off) and every controller timing (evaluation, windows, P95
target) is multiplied by the scale; worker heartbeats (which carry the target to the worker) too. What
cannot be compressed is reported in real seconds: a process start takes as long as it takes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from captcha_fleet.contract.config import ApiConfig, FleetConfig, WorkerConfig
from captcha_fleet.contract.methods import first_poll_delays
from captcha_fleet.controller.settings import ControllerSettings

# Controller settings measured in seconds of trace time: scaled.
SCALED_CONTROLLER_FIELDS = (
    "interval_s",
    "quick_check_s",
    "scale_down_window_s",
    "release_window_s",
    "p95_target_s",
    "p95_up_s",
    "p95_down_s",
    "solve_time_prior_s",
    "stale_after_s",
    "stuck_after_s",
    "rate_window_s",
    "latency_window_s",
    "balance_cache_s",
    "leader_ttl_s",
)
HEARTBEAT_S = 2.0  # the worker's default heartbeat (and target read) interval, in trace seconds


def replay_config(
    redis_url: str,
    api_base: str,
    time_scale: float,
    settings: ControllerSettings | None = None,
    key_prefix: str = "replay",
) -> FleetConfig:
    """Fleet settings at ``time_scale``; ``settings`` are the controller's, in trace seconds."""
    scale = time_scale
    api = compressed_api(api_base, "replay-key", scale)
    worker = WorkerConfig(
        initial_slots=0,  # services take nothing until the controller gives them a target
        heartbeat_interval_s=max(0.05, HEARTBEAT_S * scale),
        heartbeat_ttl_s=max(1.0, 10 * scale),
        reaper_interval_s=max(0.2, 5 * scale),
        drain_timeout_s=max(5.0, 60 * scale),
        claim_timeout_s=max(0.05, 1.0 * scale),
    )
    base = settings or ControllerSettings()
    controller: dict[str, Any] = {
        f.name: getattr(base, f.name)
        for f in dataclasses.fields(base)
        if f.name not in ("host_name", "metrics_host", "metrics_port")
    }
    for name in SCALED_CONTROLLER_FIELDS:
        controller[name] = getattr(base, name) * scale
    controller["drain_timeout_s"] = max(5.0, base.drain_timeout_s * scale)
    controller["decisions_max"] = max(base.decisions_max, 100_000)  # the replay reads every decision back
    return FleetConfig(
        redis_url=redis_url, key_prefix=key_prefix, api=api, worker=worker, raw={"controller": controller}
    )


def compressed_api(api_base: str, key: str, scale: float) -> ApiConfig:
    """The provider's advised timings (first poll, interval, deadline, back-off) at ``scale``: demo and replay."""
    return ApiConfig(
        base=api_base,
        key=key,
        first_poll_delay_s=first_poll_delays(scale),
        poll_interval_s=5 * scale,
        task_deadline_s=180 * scale,
        backoff_base_s=1 * scale,
        backoff_max_s=60 * scale,
        fatal_recheck_s=60 * scale,
    )


def in_trace_seconds(settings: ControllerSettings, time_scale: float) -> ControllerSettings:
    """A running fleet's controller settings (real seconds) in the trace's seconds: the inverse of the scaling
    :func:`replay_config` applies, so its P95 target compares with latencies divided by the time scale."""
    return dataclasses.replace(
        settings, **{name: getattr(settings, name) / time_scale for name in SCALED_CONTROLLER_FIELDS}
    )
