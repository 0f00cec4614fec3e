"""Host placement: which worker service instances run on which host (pure, shared by the controller and actuators).

``captcha_fleet.controller.placement`` decides how many services the fleet needs and which ones to drain; this
module decides *where* they run across an inventory of hosts:

- spread: a new service goes to the eligible host with the fewest services (ties: host name order);
- a per-host maximum (``HostState.max_services``);
- hosts that are draining or unreachable get no new services; an unreachable host's services count as lost and
  are placed on the others (a draining host keeps what it runs: the rolling update restarts those);
- instances are named by number ("1", "2", ...); a new one takes the lowest free number on its host; existing
  instances stay where they are (no needless moves); scale-in removes the named ``stop`` instances first, then the
  highest-numbered instances of the most loaded hosts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from captcha_fleet.controller.actuator import HostState, instance_order, worker_id_for


def eligible(host: HostState) -> bool:
    """May this host receive new services?"""
    return host.reachable and not host.draining and not host.retiring


def next_instance(taken: Collection[str]) -> str:
    """The lowest positive instance number not in ``taken``."""
    n = 1
    while str(n) in taken:
        n += 1
    return str(n)


def place_services(
    count: int,
    hosts: Mapping[str, HostState],
    current: Mapping[str, frozenset[str]] | None = None,
    stop: Collection[str] = (),
) -> dict[str, frozenset[str]]:
    """Instances per host so that ``count`` services run on eligible hosts.

    ``current`` is what runs now (default: each host's ``running``); ``stop`` holds worker ids
    (``host:instance``) the controller chose to stop (drained ones): they go first when scaling in and are
    never kept. Draining hosts keep their instances and do not count; unreachable hosts get nothing.
    """
    now = {name: frozenset(current[name]) if current and name in current else h.running for name, h in hosts.items()}
    stop_ids = set(stop)
    out: dict[str, set[str]] = {}
    for name, host in hosts.items():
        if not host.reachable:
            out[name] = set()
        elif host.draining:
            out[name] = set(now[name])
        else:
            out[name] = {i for i in now[name] if worker_id_for(name, i) not in stop_ids}
            # never above the host's maximum
            while len(out[name]) > host.max_services:
                out[name].remove(max(out[name], key=instance_order))
    live = [n for n in sorted(hosts) if eligible(hosts[n])]
    placed = sum(len(out[n]) for n in live)
    # scale in: the most loaded host gives up its highest instance
    while placed > count:
        name = max(live, key=lambda n: (len(out[n]), n))
        out[name].remove(max(out[name], key=instance_order))
        placed -= 1
    # scale out: the least loaded host with room takes the lowest free instance
    while placed < count:
        room = [n for n in live if len(out[n]) < hosts[n].max_services]
        if not room:
            break  # the inventory is full: place what fits
        name = min(room, key=lambda n: (len(out[n]), n))
        # never reuse the name of an instance that still runs (it may be draining under that worker id)
        out[name].add(next_instance(out[name] | now[name]))
        placed += 1
    return {name: frozenset(v) for name, v in out.items()}


def replace_ineligible(
    desired: Mapping[str, frozenset[str]], hosts: Mapping[str, HostState]
) -> dict[str, frozenset[str]]:
    """``desired`` with the share of unreachable hosts, and new services asked of draining hosts, moved to others.

    What an eligible host was asked to run stays as asked (up to its maximum); the services that cannot go where
    they were asked are added on the other eligible hosts by the spreading rule.
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
    live_total = sum(len(kept[n]) for n in hosts if eligible(hosts[n]))
    return place_services(live_total + moved, hosts, current=kept)
