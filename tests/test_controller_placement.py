"""Placement: targets per worker, idlest first to drain, never a busy one stopped."""

from __future__ import annotations

from captcha_fleet.controller.placement import ServiceView, place


def test_spreads_slots_on_running_services_first() -> None:
    services = [ServiceView("h:1", "running"), ServiceView("h:2", "running"), ServiceView("h:3", "starting")]
    p = place(25, 3, 10, services)
    assert p.targets == {"h:1": 10, "h:2": 10, "h:3": 5}
    assert p.start == 0 and not p.drain


def test_starts_what_is_missing_with_targets() -> None:
    p = place(25, 4, 10, [ServiceView("h:1", "running")])
    assert p.start == 3
    assert p.targets == {"h:1": 10}
    assert sum(p.new_targets) == 15 and max(p.new_targets) <= 10


def test_drains_the_idlest_and_cancels_starting_first() -> None:
    services = [
        ServiceView("h:1", "running", busy=5),
        ServiceView("h:2", "running", busy=1),
        ServiceView("h:3", "starting"),
        ServiceView("h:4", "running", busy=3),
    ]
    p = place(10, 2, 10, services)
    assert p.drain == ("h:3", "h:2")
    assert p.targets["h:3"] == 0 and p.targets["h:2"] == 0
    assert p.targets["h:1"] + p.targets["h:4"] == 10


def test_brings_back_a_draining_service_before_starting_one() -> None:
    services = [ServiceView("h:1", "running", busy=5), ServiceView("h:2", "draining", busy=2)]
    p = place(15, 2, 10, services)
    assert p.undrain == ("h:2",) and p.start == 0
    assert p.targets == {"h:1": 8, "h:2": 7}


def test_replaces_a_sick_host() -> None:
    services = [ServiceView("a:1", "running", 2, "a"), ServiceView("b:1", "running", 2, "b")]
    p = place(20, 2, 10, services, replace_hosts={"b"})
    assert p.drain == ("b:1",)
    assert p.start == 1
    assert p.targets["a:1"] == 10 and p.new_targets == (10,)


def test_never_more_than_the_service_can_hold() -> None:
    p = place(100, 1, 10, [ServiceView("h:1", "running")])
    assert p.targets == {"h:1": 10}
    assert p.start == 0 and p.unplaced == 90  # the service count is a ceiling: the slots are cut, none started
