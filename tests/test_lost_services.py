"""A managed service that stops sending heartbeats while its actuator still believes it up (``supervisorctl stop``
outside the controller, a crash loop, a hung process) is replaced, not counted as "starting" for ever; one still
being started, one the actuator is busy starting, or one whose heartbeat is missing only briefly (a Redis
failover can outlast a heartbeat's TTL) is left alone. A real redis-server and the real control step; the actuator
is a stand-in that, like the ansible one, believes what it applied runs (it makes no remote call to look)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pytest
import redis

from captcha_fleet.apps.cli import main
from captcha_fleet.contract.config import FleetConfig
from captcha_fleet.contract.keys import Keys
from captcha_fleet.contract.records import Heartbeat
from captcha_fleet.controller.actuators.base import ActuatorState
from captcha_fleet.controller.hosts.state import HostState, worker_id_for
from captcha_fleet.controller.loop import Controller
from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.worker.queue import TaskQueue
from tests.control_step import OffsetClock, beat, leading_controller, step

HOST = "h"


class BelievingActuator:
    """Believes every applied instance runs, except those it is told are still pending."""

    def __init__(self) -> None:
        self.desired: frozenset[str] = frozenset()
        self.pending: frozenset[str] = frozenset()

    def observe(self) -> ActuatorState:
        host = HostState(HOST, max_services=10, running=self.desired - self.pending, pending=self.pending)
        return ActuatorState(hosts={HOST: host})

    def apply(self, desired: Mapping[str, frozenset[str]]) -> None:
        self.desired = frozenset(desired.get(HOST, frozenset()))

    def close(self) -> None:
        pass


def stop_out_of_band(r: redis.Redis, keys: Keys, wid: str) -> None:
    """What a worker stopped by ``supervisorctl stop`` leaves: no heartbeat, no registration."""
    r.delete(keys.heartbeat(wid))
    r.zrem(keys.workers, wid)


def controller(r: redis.Redis, keys: Keys) -> tuple[Controller, BelievingActuator, OffsetClock]:
    settings = ControllerSettings(min_services=1, min_slots=2, start_timeout_s=30.0, missing_after_s=10.0)
    clock, actuator = OffsetClock(), BelievingActuator()
    return leading_controller(r, keys, settings, actuator, clock), actuator, clock


def step_at(ctl: Controller, clock: OffsetClock, offset: float) -> dict[str, Any]:
    clock.offset = offset
    return step(ctl)


def status_shows(capsys: pytest.CaptureFixture[str], redis_url: str, keys: Keys) -> str:
    """What ``captcha-fleet status`` prints for this fleet."""
    capsys.readouterr()
    assert main(["status", "--redis-url", redis_url, "--key-prefix", keys.prefix]) == 0
    return capsys.readouterr().out


def test_a_service_stopped_outside_the_controller_is_replaced(
    r: redis.Redis, keys: Keys, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl, actuator, clock = controller(r, keys)
    step_at(ctl, clock, 0)
    assert actuator.desired == {"1"}, "min_services: 1 placed one service"
    beat(r, keys, "h:1")
    assert "lost" not in step_at(ctl, clock, 5)

    stop_out_of_band(r, keys, "h:1")
    record = step_at(ctl, clock, 40)  # past start_timeout_s: missing from now on
    assert "lost" not in record and actuator.desired == {"1"}, "a heartbeat missing for a moment is not a loss"
    record = step_at(ctl, clock, 52)  # missing for missing_after_s
    assert record["lost"] == ["h:1"]
    assert "1" not in actuator.desired and len(actuator.desired) == 1, "replaced by a new service, min_services held"
    assert "lost (replaced): h:1 (sends no heartbeat" in status_shows(capsys, redis_url, keys)


def test_a_service_still_starting_or_pending_at_the_actuator_is_not_lost(r: redis.Redis, keys: Keys) -> None:
    ctl, actuator, clock = controller(r, keys)
    step_at(ctl, clock, 0)
    assert actuator.desired == {"1"}
    for offset in (10, 25):  # within start_timeout_s, no heartbeat yet: starting
        assert "lost" not in step_at(ctl, clock, offset)
    actuator.pending = frozenset({"1"})  # the actuator is still starting it (its run waits for a host lock)
    for offset in (50, 70, 90):
        assert "lost" not in step_at(ctl, clock, offset)
    assert actuator.desired == {"1"}
    actuator.pending = frozenset()  # the run ended, the service never sent a heartbeat: a crash loop
    step_at(ctl, clock, 100)
    assert step_at(ctl, clock, 111)["lost"] == ["h:1"]


def test_a_heartbeat_back_within_the_grace_keeps_the_service(r: redis.Redis, keys: Keys) -> None:
    ctl, actuator, clock = controller(r, keys)
    step_at(ctl, clock, 0)
    beat(r, keys, "h:1")
    step_at(ctl, clock, 35)
    stop_out_of_band(r, keys, "h:1")  # e.g. a Redis failover that outlasted the heartbeat's TTL
    assert "lost" not in step_at(ctl, clock, 40)
    beat(r, keys, "h:1")
    assert "lost" not in step_at(ctl, clock, 45)
    stop_out_of_band(r, keys, "h:1")
    assert "lost" not in step_at(ctl, clock, 50), "the grace starts again after a heartbeat came back"
    assert actuator.desired == {"1"}


def test_a_worker_stopped_cleanly_outside_the_controller_is_replaced_one_interval_on(
    r: redis.Redis, keys: Keys
) -> None:
    """``supervisorctl stop``: the worker drains and leaves a note that it stopped, so the controller need not wait
    out the failover grace (missing_after_s) for a heartbeat that will not come back (game day: 18.7 s to recover)."""
    ctl, actuator, clock = controller(r, keys)
    interval = ctl.settings.interval_s
    step_at(ctl, clock, 0)
    beat(r, keys, "h:1")
    step_at(ctl, clock, 0.5)
    worker = TaskQueue(r, FleetConfig(key_prefix=keys.prefix), "h:1")
    worker.unregister("pid:1")  # the end of a clean drain
    assert "lost" not in step_at(ctl, clock, 1.0), "seen one interval on: an out-of-band restart takes it back"
    record = step_at(ctl, clock, 1.0 + interval)  # far within start_timeout_s (30 s) and missing_after_s (10 s)
    assert record["lost"] == ["h:1"]
    assert "1" not in actuator.desired and len(actuator.desired) == 1, "replaced by a new service"


def test_a_restart_outside_the_controller_takes_its_stop_note_back(r: redis.Redis, keys: Keys) -> None:
    ctl, actuator, clock = controller(r, keys)
    step_at(ctl, clock, 0)
    beat(r, keys, "h:1")
    worker = TaskQueue(r, FleetConfig(key_prefix=keys.prefix), "h:1")
    worker.unregister("pid:1")
    heartbeat = Heartbeat(id="h:1", host="h", instance="1", process="pid:2", ts=time.time(), target=2, slots=2)
    worker.heartbeat(heartbeat, 600)  # the restarted process's first beat
    assert not r.exists(keys.stopped("h:1"))
    assert "lost" not in step_at(ctl, clock, 1.0 + ctl.settings.interval_s)
    assert actuator.desired == {"1"}


def test_a_crash_looping_service_is_replaced_though_it_never_looks_missing(
    r: redis.Redis, keys: Keys, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its supervisor restarts it each time it dies: every look finds a heartbeat, from a new process each time."""
    ctl, actuator, clock = controller(r, keys)
    step_at(ctl, clock, 0)
    beat(r, keys, "h:1", process="p0")
    assert "lost" not in step_at(ctl, clock, 5)
    beat(r, keys, "h:1", process="p1")  # one restart (a roll, a site.yml handler): not a loop
    assert "lost" not in step_at(ctl, clock, 10)
    beat(r, keys, "h:1", process="p2")
    assert "lost" not in step_at(ctl, clock, 15)
    beat(r, keys, "h:1", process="p3")  # the third restart within the window
    record = step_at(ctl, clock, 20)
    assert record["lost"] == ["h:1"] and record["lost_why"]["h:1"].startswith("crash-looping: 3 restarts")
    assert "1" not in actuator.desired and len(actuator.desired) == 1, "replaced by a new service"
    assert "lost (replaced): h:1 (crash-looping: 3 restarts" in status_shows(capsys, redis_url, keys)


def test_restarts_spread_wider_than_the_window_are_no_loop(r: redis.Redis, keys: Keys) -> None:
    ctl, _actuator, clock = controller(r, keys)
    window = ctl.restarts.window_s
    step_at(ctl, clock, 0)
    for i in range(6):
        beat(r, keys, "h:1", process=f"p{i}")
        assert "lost" not in step_at(ctl, clock, 1 + i * window / 2), "two restarts per window at most"


class TwoHostActuator(BelievingActuator):
    """Believes its services run, on two hosts."""

    def __init__(self) -> None:
        super().__init__()
        self.per_host: dict[str, frozenset[str]] = {}

    def observe(self) -> ActuatorState:
        hosts = {h: HostState(h, max_services=10, running=frozenset(self.per_host.get(h, ()))) for h in ("h", "g")}
        return ActuatorState(hosts=hosts)

    def apply(self, desired: Mapping[str, frozenset[str]]) -> None:
        self.per_host = {h: frozenset(i) for h, i in desired.items()}


def test_a_cut_host_is_given_up_once_its_heartbeat_lapsed_while_other_hosts_beat(r: redis.Redis, keys: Keys) -> None:
    """The failover grace (missing_after_s) is for Redis moving, which silences every host alike: while services
    on other hosts beat, a heartbeat past its TTL is a host cut off or a process gone (game day: the cut host's
    service counted as desired for 13 s after its heartbeat lapsed)."""
    settings = ControllerSettings(min_services=2, min_slots=4, slots_per_service=2, start_timeout_s=30.0,
                                  missing_after_s=10.0, service_headroom=0.0)  # fmt: skip
    clock, actuator = OffsetClock(), TwoHostActuator()
    ctl = leading_controller(r, keys, settings, actuator, clock)
    step_at(ctl, clock, 0)
    placed = [worker_id_for(h, i) for h, instances in actuator.per_host.items() for i in instances]
    assert len({w.partition(":")[0] for w in placed}) == 2, placed  # one service on each host
    for wid in placed:
        beat(r, keys, wid)
    step_at(ctl, clock, 35)
    cut = next(w for w in placed if w.startswith("h:"))
    stop_out_of_band(r, keys, cut)  # its heartbeat lapsed: the host is cut off (no stop note)
    record = step_at(ctl, clock, 36)
    assert record["lost"] == [cut], "given up at once: the other host's service beats, so Redis is fine"
    assert "sends no heartbeat" in record["lost_why"][cut]
    assert actuator.per_host.get("h", frozenset()) == frozenset(), "no replacement on the silent host"
    assert len(actuator.per_host["g"]) == 2, "the replacement runs beside the service that beats"
