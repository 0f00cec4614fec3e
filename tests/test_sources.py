"""Every signal source counts the services the controller steers alike: the running ones as services, the targets
of the ones still starting as capacity on its way (the Redis source from the target keys in a real Redis, the
simulator's from its simulated ones), and builds its signals through the same windows."""

from __future__ import annotations

import redis

from captcha_fleet.contract.keys import Keys
from captcha_fleet.controller.placement import ServiceView
from captcha_fleet.controller.settings import ControllerSettings
from captcha_fleet.controller.signals import Signals
from captcha_fleet.controller.sim.source import FleetReading, SimSignalSource
from captcha_fleet.controller.sources.base import SignalSource
from captcha_fleet.controller.sources.redis_signals import RedisSignalSource

SETTINGS = ControllerSettings()
TARGETS = {"h1:1": 40, "h1:2": 25, "h2:3": 60}  # h2:3 runs; h1:1 and h1:2 start; h2:9 starts with no target yet
VIEWS = [
    ServiceView("h1:1", "starting", 0, "h1"),
    ServiceView("h1:2", "starting", 0, "h1"),
    ServiceView("h2:9", "starting", 0, "h2"),
    ServiceView("h2:3", "running", 12, "h2"),
    ServiceView("h2:4", "draining", 3, "h2"),
]


def steered_by(source: SignalSource) -> Signals:
    base = Signals(now=1.0, pending=0, in_flight=15, slots=60, busy=15, services=7, starting_slots=999)
    return source.steered(base, VIEWS)


def test_the_redis_source_counts_the_targets_written_for_starting_services(r: redis.Redis, keys: Keys) -> None:
    for wid, target in TARGETS.items():
        r.set(keys.target(wid), target)
    steered = steered_by(RedisSignalSource(r, keys, SETTINGS))
    assert (steered.starting_slots, steered.services) == (65, 1)
    assert (steered.slots, steered.busy) == (60, 15)  # what the heartbeats said is kept


def test_the_simulator_source_counts_them_alike() -> None:
    reading = FleetReading(now=1.0, pending=0, busy=15, slots=60, arrived=0, completed=0)
    steered = steered_by(SimSignalSource(SETTINGS, lambda: reading, lambda wid: TARGETS.get(wid, 0)))
    assert (steered.starting_slots, steered.services) == (65, 1)


def test_the_simulator_source_reads_rates_and_solve_times_through_the_windows() -> None:
    readings = iter(
        [
            FleetReading(now=0.0, pending=5, busy=10, slots=20, arrived=100, completed=90, balance=50.0, spent=0.0),
            FleetReading(now=10.0, pending=5, busy=10, slots=20, arrived=120, completed=105, balance=49.0, spent=1.0),
        ]
    )
    source = SimSignalSource(SETTINGS, lambda: next(readings), lambda _wid: 0)
    source.read()
    for i in range(20):
        source.finished(5.0, "recaptcha_v2", 30.0 + i, 15.0 + i)
    signals = source.read().signals
    assert signals.arrival_rate == 2.0 and signals.completion_rate == 1.5  # per second over the two readings
    assert signals.burn_rate == 0.1 and signals.balance == 49.0
    assert signals.completed_in_window == 20 and signals.p95_latency_s is not None
    assert signals.mean_solve_s is not None and 15.0 <= signals.mean_solve_s <= 34.0
    assert set(signals.solve_by_method) == {"recaptcha_v2"}
    assert signals.stale_sources(SETTINGS.stale_after_s) == ()  # the simulation never loses a source
