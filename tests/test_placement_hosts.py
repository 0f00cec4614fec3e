"""Host placement: spread, per-host maximum, draining/unreachable hosts, re-placing a failed host's share."""

from __future__ import annotations

from captcha_fleet.controller.actuator import HostState
from captcha_fleet.controller.actuators.host_placement import next_instance, place_services, replace_ineligible


def hosts(*states: HostState) -> dict[str, HostState]:
    return {h.name: h for h in states}


def h(name: str, running: set[str] | None = None, max_services: int = 4, **kw: object) -> HostState:
    return HostState(name=name, max_services=max_services, running=frozenset(running or ()), **kw)  # type: ignore[arg-type]


def counts(placement: dict[str, frozenset[str]]) -> dict[str, int]:
    return {k: len(v) for k, v in placement.items()}


def test_spreads_new_services_evenly_in_name_order() -> None:
    out = place_services(5, hosts(h("a"), h("b"), h("c")))
    assert counts(out) == {"a": 2, "b": 2, "c": 1}
    assert out["a"] == {"1", "2"} and out["c"] == {"1"}


def test_keeps_existing_services_where_they_are() -> None:
    out = place_services(3, hosts(h("a", {"1", "2"}), h("b"), h("c")))
    assert out["a"] == {"1", "2"}
    assert counts(out) == {"a": 2, "b": 1, "c": 0}


def test_respects_the_per_host_maximum_and_places_what_fits() -> None:
    out = place_services(10, hosts(h("a", max_services=2), h("b", max_services=3)))
    assert counts(out) == {"a": 2, "b": 3}


def test_scale_in_takes_from_the_most_loaded_host_highest_instance_first() -> None:
    out = place_services(3, hosts(h("a", {"1", "2", "3"}), h("b", {"1", "2"})))
    assert out == {"a": frozenset({"1", "2"}), "b": frozenset({"1"})}


def test_scale_in_stops_the_named_drained_instances_first() -> None:
    out = place_services(3, hosts(h("a", {"1", "2"}), h("b", {"1", "2"})), stop=["a:1"])
    assert out["a"] == {"2"}
    assert out["b"] == {"1", "2"}


def test_new_instances_never_reuse_a_name_that_still_runs() -> None:
    out = place_services(2, hosts(h("a", {"1"}, max_services=4)), stop=["a:1"])
    assert out["a"] == {"2", "3"}


def test_draining_hosts_keep_their_services_and_get_no_new_ones() -> None:
    out = place_services(4, hosts(h("a", {"1"}, draining=True), h("b"), h("c")))
    assert out["a"] == {"1"}
    assert counts(out) == {"a": 1, "b": 2, "c": 2}


def test_unreachable_hosts_lose_their_share_to_the_others() -> None:
    out = place_services(4, hosts(h("a", {"1", "2"}, reachable=False), h("b", {"1"}), h("c", {"1"})))
    assert out["a"] == frozenset()
    assert counts(out) == {"a": 0, "b": 2, "c": 2}


def test_replace_ineligible_moves_a_failed_hosts_share() -> None:
    state = hosts(h("a", {"1"}, reachable=False, last_error="unreachable"), h("b", {"1"}), h("c"))
    desired = {"a": frozenset({"1", "2"}), "b": frozenset({"1"}), "c": frozenset({"1"})}
    out = replace_ineligible(desired, state)
    assert out["a"] == frozenset()
    assert sum(counts(out).values()) == 4
    assert out["b"] >= {"1"} and out["c"] >= {"1"}
    assert abs(len(out["b"]) - len(out["c"])) <= 1


def test_replace_ineligible_is_identity_when_every_host_is_fine() -> None:
    state = hosts(h("a", {"1"}), h("b"))
    desired = {"a": frozenset({"1", "5"}), "b": frozenset({"2"})}
    assert replace_ineligible(desired, state) == desired


def test_replace_ineligible_keeps_draining_hosts_as_they_are() -> None:
    state = hosts(h("a", {"1"}, draining=True), h("b"))
    out = replace_ineligible({"a": frozenset({"1", "2"}), "b": frozenset()}, state)
    assert out["a"] == {"1"}
    assert out["b"] == {"1"}


def test_full_inventory_places_what_fits() -> None:
    out = place_services(9, hosts(h("a", max_services=1), h("b", max_services=1, reachable=False)))
    assert counts(out) == {"a": 1, "b": 0}


def test_next_instance() -> None:
    assert next_instance(set()) == "1"
    assert next_instance({"1", "2", "4"}) == "3"
