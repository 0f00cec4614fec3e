"""The actuator's host roster follows the inventory: new hosts join, vanished hosts retire, then are forgotten.

A host that leaves the inventory is not dropped at once: it still runs services holding tasks. It is marked
``retiring`` (no new services; the control loop drains the ones it runs and stops them), and forgotten once it runs
nothing and nothing is wanted there. A host that comes back before that is simply taken back.

Stopping services on a host the inventory no longer names needs the host declared to Ansible: :func:`retired_source`
writes a small YAML inventory with each retiring host in its last known groups with its own (host-level) variables,
as ``ansible-inventory --export`` printed them; group variables come from the live inventory, where the groups still
are, and ``host_vars/`` files are applied by Ansible itself. Inline ``!vault`` values stay encrypted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from captcha_fleet.contract.inventory import InventoryHost

from .state import HostState

_VAULT_KEY = "__ansible_vault"


@dataclass(frozen=True)
class RosterChange:
    """Hosts that joined, started retiring, came back, or were forgotten (for the log and the decision log)."""

    added: tuple[str, ...] = ()
    retiring: tuple[str, ...] = ()
    returned: tuple[str, ...] = ()
    forgotten: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.retiring or self.returned or self.forgotten)

    def merge(self, other: RosterChange) -> RosterChange:
        """Both changes, in order (a host may appear under two headings: retiring, then forgotten)."""
        return RosterChange(
            self.added + other.added,
            self.retiring + other.retiring,
            self.returned + other.returned,
            self.forgotten + other.forgotten,
        )

    def to_dict(self) -> dict[str, list[str]]:
        """Only the non-empty headings."""
        parts = {"added": self.added, "retiring": self.retiring, "returned": self.returned, "forgotten": self.forgotten}
        return {k: list(v) for k, v in parts.items() if v}


def follow_inventory(hosts: MutableMapping[str, HostState], names: Iterable[str], max_services: int) -> RosterChange:
    """Add the hosts of ``names`` that are new, retire the known ones it lacks, take back returning ones."""
    wanted = list(dict.fromkeys(names))
    added: list[str] = []
    returned: list[str] = []
    for name in wanted:
        host = hosts.get(name)
        if host is None:
            hosts[name] = HostState(name=name, max_services=max_services)
            added.append(name)
        elif host.retiring:
            hosts[name] = replace(host, retiring=False)
            returned.append(name)
    retiring: list[str] = []
    present = set(wanted)
    for name, host in list(hosts.items()):
        if name not in present and not host.retiring:
            hosts[name] = replace(host, retiring=True)
            retiring.append(name)
    return RosterChange(added=tuple(added), retiring=tuple(retiring), returned=tuple(returned))


def forget_retired(hosts: MutableMapping[str, HostState], desired: Mapping[str, frozenset[str]] | None) -> RosterChange:
    """Drop retiring hosts that run nothing, have nothing in flight and are wanted to run nothing."""
    gone = [
        name
        for name, host in hosts.items()
        if host.retiring and not host.running and not host.pending and not (desired or {}).get(name)
    ]
    for name in gone:
        del hosts[name]
    return RosterChange(forgotten=tuple(gone))


class _Vaulted(str):
    """An inline vault value, written back with its ``!vault`` tag."""


def _vault_representer(dumper: yaml.SafeDumper, value: _Vaulted) -> yaml.Node:
    return dumper.represent_scalar("!vault", str(value), style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Vaulted, _vault_representer)


def _revault(value: Any) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {_VAULT_KEY}:
            return _Vaulted(str(value[_VAULT_KEY]))
        return {str(k): _revault(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_revault(v) for v in value]
    return value


def retired_source(hosts: Iterable[InventoryHost], path: Path) -> Path:
    """Write ``path`` (mode 0600): an inventory declaring the given hosts in their groups with their own vars."""
    groups: dict[str, dict[str, Any]] = {}
    own: dict[str, Any] = {}
    for host in hosts:
        own[host.name] = _revault(dict(host.variables)) or None
        for group in host.groups:
            if group not in ("all", "ungrouped"):
                groups.setdefault(group, {"hosts": {}})["hosts"][host.name] = None
    document = {"all": {"hosts": own, "children": groups}}
    path.touch(mode=0o600)
    path.write_text(yaml.dump(document, Dumper=_Dumper, sort_keys=True), encoding="utf-8")
    return path
