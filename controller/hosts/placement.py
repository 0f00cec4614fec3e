"""Host placement: which host a new worker service goes to, and its name (pure; one rule for every path).

``captcha_fleet.controller.placement`` decides how many services the fleet needs and which ones to drain; this
module decides *where* a new one runs and what it is called. Two paths place services, by this one rule: the
control loop (every new service) and the Ansible actuator (the share of a host that failed, when it is built with
``replace_failed=True``; the controller's CLI builds it without, as the loop re-places lost services itself).

- a new service goes to the eligible host with the most free room (its ``max_services`` minus what it holds);
  ties go to the first host in name order; a full inventory places what fits;
- hosts that are draining, unreachable or retiring get no new services (a draining host keeps what it runs: the
  rolling update restarts those);
- a new service is named by a number above every name given before (the loop keeps a counter; the actuator counts
  above every name of the desired state), so a worker id never comes back while the heartbeat and in-flight list
  of an earlier process of that name may still be there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .state import HostState, instance_order


def eligible(host: HostState) -> bool:
    """May this host receive new services?"""
    return host.reachable and not host.draining and not host.retiring


def pick_host(hosts: Mapping[str, HostState], placed: Mapping[str, int]) -> str | None:
    """The eligible host with the most free room given ``placed`` services per host; None when all are full."""
    best, room = None, 0
    for name, host in sorted(hosts.items()):
        free = host.max_services - placed.get(name, 0)
        if eligible(host) and free > room:
            best, room = name, free
    return best


def place_new(
    count: int, hosts: Mapping[str, HostState], placed: Mapping[str, int], first_number: int
) -> list[tuple[str, str]]:
    """``count`` new services as (host, instance), one at a time by :func:`pick_host`, numbered from ``first_number``.

    Fewer when the inventory is full.
    """
    load = dict(placed)
    out: list[tuple[str, str]] = []
    for number in range(first_number, first_number + count):
        host = pick_host(hosts, load)
        if host is None:
            break
        load[host] = load.get(host, 0) + 1
        out.append((host, str(number)))
    return out


def above_every_name(names: Iterable[str]) -> int:
    """The first number no numbered name in ``names`` has reached."""
    return 1 + max((int(n) for n in names if n.isdigit()), default=0)


def replace_ineligible(
    desired: Mapping[str, frozenset[str]], hosts: Mapping[str, HostState]
) -> dict[str, frozenset[str]]:
    """``desired`` with the share of unreachable hosts, and new services asked of draining hosts, moved to others.

    What an eligible host was asked to run stays as asked (up to its maximum); the services that cannot go where
    they were asked are placed by :func:`place_new`, named above every name of ``desired``: the same names for the
    same ``desired`` and hosts, so recomputing it never moves a service that already runs.
    """
    kept: dict[str, frozenset[str]] = {}
    moved = 0
    for name, host in hosts.items():
        wanted = frozenset(desired.get(name, frozenset()))
        if not host.reachable:
            kept[name] = frozenset()
            moved += len(wanted)
        elif host.draining:
            kept[name] = host.running
            moved += len(wanted - host.running)
        else:
            ordered = sorted(wanted, key=instance_order)
            kept[name] = frozenset(ordered[: host.max_services])
            moved += max(0, len(ordered) - host.max_services)
    for name, wanted in desired.items():
        if name not in hosts:
            moved += len(wanted)  # a host the inventory does not know
    if moved == 0:
        return kept
    first = above_every_name(n for names in desired.values() for n in names)
    out = {name: set(instances) for name, instances in kept.items()}
    for name, instance in place_new(moved, hosts, {n: len(v) for n, v in kept.items()}, first):
        out[name].add(instance)
    return {name: frozenset(v) for name, v in out.items()}
