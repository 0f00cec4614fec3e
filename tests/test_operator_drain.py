"""A host a rolling update (or decommission.yml) drains holds no slots until the operator is done: the controller
counts its services as no capacity and makes them up on another host, within ``max_services`` counted with them.

Found by the game day: a roll of the one host that ran the fleet's only service left 0 services serving for the
roll's drain, restart and gate (queue 0 -> 69, P95 2.3 s -> 5.9 s) while two hosts stood idle. A real redis-server
and the real control step; the actuator is a stand-in that, like the ansible one, reads the hosts' draining flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from captcha_fleet.contract.keys import Keys
from captcha_fleet.controller.actuators.base import ActuatorState
from captcha_fleet.controller.hosts.state import HostState
from captcha_fleet.controller.loop import Controller
from captcha_fleet.controller.settings import ControllerSettings
from tests.control_step import OffsetClock, beat, leading_controller, step

HOSTS = ("a", "b")


CLOCK = OffsetClock()


class TwoHostActuator:
    """Believes every applied instance runs; reads each host's draining flag as the ansible actuator does."""

    def __init__(self) -> None:
        self.desired: dict[str, frozenset[str]] = {h: frozenset() for h in HOSTS}
        self.draining: set[str] = set()

    def refresh_draining(self, client: Any, keys: Any) -> None:
        self.draining = {h for h in HOSTS if client.exists(keys.host_draining(h))}

    def observe(self) -> ActuatorState:
        hosts = {h: HostState(h, max_services=4, running=self.desired[h], draining=h in self.draining) for h in HOSTS}
        return ActuatorState(hosts=hosts)

    def apply(self, desired: Mapping[str, frozenset[str]]) -> None:
        self.desired = {h: frozenset(desired.get(h, frozenset())) for h in HOSTS}

    def close(self) -> None:
        pass


def controller(r: redis.Redis, keys: Keys, max_services: int) -> tuple[Controller, TwoHostActuator]:
    settings = ControllerSettings(
        min_services=1,
        max_services=max_services,
        min_slots=2,
        slots_per_service=2,
        max_slots=2 * max_services,
        service_headroom=0.0,
        scale_down_window_s=0.0,
    )
    actuator = TwoHostActuator()
    return leading_controller(r, keys, settings, actuator, CLOCK), actuator


def hold_after(ctl: Controller) -> float:
    """How long a host must be drained before its services count as held: longer than a service's start."""
    return max(ctl.settings.service_startup_s, 2 * ctl.settings.interval_s)


def serving_one_service_on_a(r: redis.Redis, keys: Keys, max_services: int) -> tuple[Controller, TwoHostActuator]:
    """The fleet's one service on host ``a`` (``b`` was being rolled meanwhile), serving."""
    ctl, actuator = controller(r, keys, max_services)
    r.set(keys.host_draining("b"), "1", ex=60)
    record = step(ctl)
    assert record["desired_services"] == 1 and actuator.desired == {"a": {"1"}, "b": frozenset()}, record
    beat(r, keys, "a:1", target=2, at=CLOCK())
    r.delete(keys.host_draining("b"))
    step(ctl)
    assert actuator.desired == {"a": {"1"}, "b": frozenset()}
    return ctl, actuator


def test_a_host_drained_by_a_roll_has_its_services_made_up_elsewhere_and_left_to_the_roll(
    r: redis.Redis, keys: Keys
) -> None:
    ctl, actuator = serving_one_service_on_a(r, keys, max_services=4)
    r.set(keys.host_draining("a"), "1", ex=60)  # the roll marks the host
    record = step(ctl)
    assert not actuator.desired["b"] and record["started"] == [], "a drain of seconds (a site.yml restart) is no hold"
    CLOCK.offset += hold_after(ctl)
    record = step(ctl)
    assert actuator.desired["b"], "a service is started on the host the roll leaves alone"
    assert actuator.desired["a"] == {"1"}, "the roll's host keeps its service: the roll restarts it"
    assert "a:1" not in record["draining"] and "a:1" not in record["targets"], "the controller leaves it to the roll"

    r.delete(keys.host_draining("a"))  # the roll is done: the host's service serves again
    beat(r, keys, "a:1", target=0, at=CLOCK())
    (new,) = actuator.desired["b"]
    beat(r, keys, f"b:{new}", target=2, at=CLOCK())
    record = step(ctl)
    # back to the one service the load needs: the idle one (a:1, target 0) is drained, and stopped at once
    assert [*record["draining"], *record["stopped"]] == ["a:1"], record
    assert sum(len(i) for i in actuator.desired.values()) == 1


def test_the_made_up_services_stay_within_max_services_counted_with_the_drained_ones(
    r: redis.Redis, keys: Keys
) -> None:
    ctl, actuator = serving_one_service_on_a(r, keys, max_services=1)
    r.set(keys.host_draining("a"), "1", ex=60)
    step(ctl)
    CLOCK.offset += hold_after(ctl)
    record = step(ctl)
    assert actuator.desired == {"a": {"1"}, "b": frozenset()}, "no room under max_services: no surge"
    assert record["desired_services"] == 1
