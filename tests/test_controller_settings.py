"""The controller: section of fleet.yml."""

from __future__ import annotations

from pathlib import Path

import pytest

from captcha_fleet.contract.config import ConfigError, load_config
from captcha_fleet.controller.settings import ControllerSettings, controller_settings, settings_from_config


def test_defaults_are_the_seed_thresholds() -> None:
    s = controller_settings(None)
    assert (s.queue_up, s.queue_down) == (20, 5)
    assert (s.utilization_up_pct, s.utilization_down_pct) == (80.0, 20.0)
    assert (s.p95_up_s, s.p95_down_s) == (60.0, 20.0)
    assert (s.error_act_pct, s.error_stable_pct) == (5.0, 1.0)
    assert s.balance_floor == 1.0
    assert s.interval_s == 10.0 and s.scale_down_window_s == 180.0  # 60 s flapped more than KEDA (bench/README.md)


def test_from_fleet_yml(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yml"
    path.write_text("controller:\n  plan_threads: 50\n  interval_s: 5\n  slots_per_service: 4\n")
    s = settings_from_config(load_config(path, env={}))
    assert s.plan_threads == 50 and s.interval_s == 5.0 and s.slots_per_service == 4
    assert s.max_effective_slots == 50


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"plan_thread": 5}, r"controller\.plan_thread: unknown setting"),
        ({"plan_threads": "many"}, r"controller\.plan_threads: expected an integer"),
        ({"interval_s": 0}, r"controller\.interval_s: must be positive"),
        ({"min_slots": 200, "plan_threads": 100}, r"min_slots \(200\) exceeds"),
        ({"queue_down": 30}, r"queue_down must not exceed"),
        ({"drain_fraction": 1.5}, r"drain_fraction"),
        ({"leader_ttl_s": 5.0}, r"leader_ttl_s must be longer"),
    ],
)
def test_errors_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        controller_settings(data)


def test_services_for() -> None:
    s = ControllerSettings(slots_per_service=10, service_headroom=0.2, min_services=1, max_services=5)
    assert s.services_for(0) == 1
    assert s.services_for(10) == 2  # 12 slots with headroom
    assert s.services_for(1000) == 5
