"""The helpers of the actuator contract (captcha_fleet.controller.hosts.state) every actuator shares."""

from __future__ import annotations

from captcha_fleet.controller.hosts.state import instance_order, worker_id_for


def test_instances_sort_by_number_then_by_name() -> None:
    assert sorted(["10", "b", "2", "a", "1"], key=instance_order) == ["1", "2", "10", "a", "b"]
    assert max(["3", "12", "9"], key=instance_order) == "12"


def test_worker_id_joins_host_and_instance() -> None:
    assert worker_id_for("h1", "3") == "h1:3"
