"""Host placement, the one rule of the control loop and the actuator: most free room, names never reused."""

from __future__ import annotations

from captcha_fleet.controller.hosts.placement import (
    above_every_name,
    pick_host,
    place_new,
    replace_ineligible,
)
from captcha_fleet.controller.hosts.state import HostState


def hosts(*states: HostState) -> dict[str, HostState]:
    return {h.name: h for h in states}


def h(name: str, running: set[str] | None = None, max_services: int = 4, **kw: object) -> HostState:
    return HostState(name=name, max_services=max_services, running=frozenset(running or ()), **kw)  # type: ignore[arg-type]


def counts(placement: dict[str, frozenset[str]]) -> dict[str, int]:
    return {k: len(v) for k, v in placement.items()}


def test_spreads_new_services_evenly_in_name_order_with_fresh_numbers() -> None:
    out = place_new(5, hosts(h("a"), h("b"), h("c")), {}, first_number=7)
    assert out == [("a", "7"), ("b", "8"), ("c", "9"), ("a", "10"), ("b", "11")]


def test_the_host_with_the_most_free_room_wins_not_the_one_with_fewest_services() -> None:
    state = hosts(h("big", max_services=10), h("small", max_services=2))
    assert pick_host(state, {"big": 3, "small": 0}) == "big"  # 7 free against 2
    assert pick_host(state, {"big": 9, "small": 0}) == "small"


def test_respects_the_per_host_maximum_and_places_what_fits() -> None:
    out = place_new(10, hosts(h("a", max_services=2), h("b", max_services=3)), {}, first_number=1)
    assert sorted(name for name, _ in out) == ["a", "a", "b", "b", "b"]
    assert pick_host(hosts(h("a", max_services=1)), {"a": 1}) is None


def test_draining_unreachable_and_retiring_hosts_get_no_new_services() -> None:
    state = hosts(h("a", draining=True), h("b", reachable=False), h("c", retiring=True), h("d", max_services=1))
    assert place_new(3, state, {}, first_number=1) == [("d", "1")]


def test_above_every_name() -> None:
    assert above_every_name([]) == 1
    assert above_every_name(["1", "2", "4", "manual"]) == 5


def test_replace_ineligible_moves_a_failed_hosts_share() -> None:
    state = hosts(h("a", {"1"}, reachable=False, last_error="unreachable"), h("b", {"1"}), h("c"))
    desired = {"a": frozenset({"1", "2"}), "b": frozenset({"1"}), "c": frozenset({"1"})}
    out = replace_ineligible(desired, state)
    assert out["a"] == frozenset()
    assert sum(counts(out).values()) == 4
    assert out["b"] >= {"1"} and out["c"] >= {"1"}
    assert abs(len(out["b"]) - len(out["c"])) <= 1


def test_replace_ineligible_never_reuses_a_desired_name_and_is_stable() -> None:
    state = hosts(h("a", {"1", "2"}, reachable=False), h("b", {"1"}), h("c", {"1"}))
    desired = {"a": frozenset({"1", "2"}), "b": frozenset({"1"}), "c": frozenset({"1"})}
    out = replace_ineligible(desired, state)
    assert out == {"a": frozenset(), "b": frozenset({"1", "3"}), "c": frozenset({"1", "4"})}
    # once the moved services run, the same desired state places them where they are
    running = hosts(h("a", reachable=False), h("b", {"1", "3"}), h("c", {"1", "4"}))
    assert replace_ineligible(desired, running) == out


def test_replace_ineligible_is_identity_when_every_host_is_fine() -> None:
    state = hosts(h("a", {"1"}), h("b"))
    desired = {"a": frozenset({"1", "5"}), "b": frozenset({"2"})}
    assert replace_ineligible(desired, state) == desired


def test_replace_ineligible_keeps_draining_hosts_as_they_are() -> None:
    state = hosts(h("a", {"1"}, draining=True), h("b"))
    out = replace_ineligible({"a": frozenset({"1", "2"}), "b": frozenset()}, state)
    assert out["a"] == {"1"}
    assert out["b"] == {"3"}  # the service asked of the draining host, under a name never given before


def test_replace_ineligible_places_what_fits_on_a_full_inventory() -> None:
    state = hosts(h("a", max_services=1), h("b", max_services=1, reachable=False))
    out = replace_ineligible({"a": frozenset({"1"}), "b": frozenset({"1", "2"})}, state)
    assert out == {"a": frozenset({"1"}), "b": frozenset()}
