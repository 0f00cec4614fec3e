"""Read an Ansible YAML inventory into hosts with their connection settings, without Ansible.

``doctor`` needs the address, user, port and key of every host in seconds, and importing Ansible's inventory
machinery costs more than the check itself. This reads the YAML format (``all`` / ``children`` / ``hosts`` /
``vars``, numeric host ranges such as ``web[01:03]``) plus ``group_vars/`` and ``host_vars/`` beside the file, with
Ansible's precedence; vault-encrypted files and ``!vault`` values are left out, and ``{{ var }}`` references to
other variables are resolved one name at a time (no filters, no lookups).
"""

from __future__ import annotations

import getpass
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_RANGE = re.compile(r"\[(\d+):(\d+)\]")
_REFERENCE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class InventoryError(ValueError):
    """The inventory cannot be read; the message names the file and the place."""


class VaultValue(str):
    """An inline ``!vault`` value: present, but unreadable without the vault password."""


@dataclass(frozen=True)
class InventoryHost:
    """One host and the connection settings ``doctor`` needs."""

    name: str
    address: str
    port: int = 22
    user: str = ""
    key_file: str | None = None
    password: str | None = field(default=None, repr=False)
    groups: tuple[str, ...] = ()
    known_hosts_files: tuple[str, ...] = ()
    strict_host_key_checking: bool = True
    python: str = "python3"
    connection: str = "ssh"


class _Loader(yaml.SafeLoader):
    """SafeLoader that accepts Ansible's ``!vault`` and ``!unsafe`` tags."""


def _vault(loader: yaml.SafeLoader, node: yaml.Node) -> VaultValue:
    return VaultValue("")


def _unsafe(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return str(loader.construct_scalar(node))  # type: ignore[arg-type]


_Loader.add_constructor("!vault", _vault)
_Loader.add_constructor("!unsafe", _unsafe)


def load_inventory(path: str | Path) -> list[InventoryHost]:
    """Every host in the inventory file, in the order they first appear."""
    path = Path(path)
    data = _read_yaml(path)
    if data is None:
        return []
    if not isinstance(data, Mapping):
        raise InventoryError(f"{path}: the top level must be a mapping of groups (e.g. 'all:')")
    order: list[str] = []
    host_vars: dict[str, dict[str, Any]] = {}
    host_groups: dict[str, list[tuple[int, str]]] = {}
    group_vars: dict[str, dict[str, Any]] = {}
    for name, body in data.items():
        _walk_group(str(name), body, [], path, order, host_vars, host_groups, group_vars)
    directory = path.parent
    return [
        _make_host(name, _merge_vars(name, host_vars, host_groups, group_vars, directory), host_groups[name])
        for name in order
    ]


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read: {exc.strerror}") from exc
    if text.lstrip().startswith("$ANSIBLE_VAULT"):
        raise InventoryError(f"{path}: vault-encrypted; doctor reads plain inventories only")
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise InventoryError(f"{path}: not valid YAML: {exc}") from exc


def _walk_group(
    group: str,
    body: Any,
    parents: list[str],
    path: Path,
    order: list[str],
    host_vars: dict[str, dict[str, Any]],
    host_groups: dict[str, list[tuple[int, str]]],
    group_vars: dict[str, dict[str, Any]],
) -> None:
    where = ".".join([*parents, group])
    if group in parents:
        raise InventoryError(f"{path}: {where}: group contains itself")
    if body is None:
        return
    if not isinstance(body, Mapping):
        raise InventoryError(f"{path}: {where}: expected a mapping with hosts/vars/children")
    unknown = set(body) - {"hosts", "vars", "children"}
    if unknown:
        raise InventoryError(f"{path}: {where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    gvars = body.get("vars") or {}
    if not isinstance(gvars, Mapping):
        raise InventoryError(f"{path}: {where}.vars: expected a mapping")
    group_vars.setdefault(group, {}).update(gvars)
    lineage = [*parents, group]
    hosts = body.get("hosts") or {}
    if not isinstance(hosts, Mapping):
        raise InventoryError(f"{path}: {where}.hosts: expected a mapping of host names")
    for pattern, hvars in hosts.items():
        if hvars is not None and not isinstance(hvars, Mapping):
            raise InventoryError(f"{path}: {where}.hosts.{pattern}: expected a mapping of variables")
        for name in _expand(str(pattern)):
            if name not in host_vars:
                order.append(name)
                host_vars[name] = {}
                host_groups[name] = []
            host_vars[name].update(hvars or {})
            for level, ancestor in enumerate(lineage):
                if (level, ancestor) not in host_groups[name]:
                    host_groups[name].append((level, ancestor))
    children = body.get("children") or {}
    if not isinstance(children, Mapping):
        raise InventoryError(f"{path}: {where}.children: expected a mapping of groups")
    for child, child_body in children.items():
        _walk_group(str(child), child_body, lineage, path, order, host_vars, host_groups, group_vars)


def _expand(pattern: str) -> Iterator[str]:
    """``web[01:03].lan`` → ``web01.lan``, ``web02.lan``, ``web03.lan`` (numeric ranges only)."""
    match = _RANGE.search(pattern)
    if match is None:
        yield pattern
        return
    start, end = match.group(1), match.group(2)
    width = len(start) if start.startswith("0") else 0
    for number in range(int(start), int(end) + 1):
        yield from _expand(pattern[: match.start()] + str(number).zfill(width) + pattern[match.end() :])


def _merge_vars(
    name: str,
    host_vars: Mapping[str, Mapping[str, Any]],
    host_groups: Mapping[str, list[tuple[int, str]]],
    group_vars: Mapping[str, Mapping[str, Any]],
    directory: Path,
) -> dict[str, Any]:
    """Ansible's order: inline group vars < group_vars/ files (shallow groups first) < inline host vars < host_vars/."""
    groups = sorted(set(host_groups[name]), key=lambda item: (item[0], item[1]))
    if not any(group == "all" for _, group in groups):
        groups.insert(0, (-1, "all"))
    merged: dict[str, Any] = {}
    for _, group in groups:
        merged.update(group_vars.get(group, {}))
    for _, group in groups:
        merged.update(_vars_dir(directory / "group_vars", group))
    merged.update(host_vars[name])
    merged.update(_vars_dir(directory / "host_vars", name))
    return merged


def _vars_dir(base: Path, name: str) -> dict[str, Any]:
    """``base/name.yml`` or every ``*.yml`` under ``base/name/``; vault-encrypted files are skipped."""
    candidates: list[Path] = []
    for suffix in ("", ".yml", ".yaml"):
        file = base / f"{name}{suffix}"
        if file.is_file():
            candidates.append(file)
    folder = base / name
    if folder.is_dir():
        candidates.extend(sorted(p for p in folder.iterdir() if p.suffix in (".yml", ".yaml") and p.is_file()))
    merged: dict[str, Any] = {}
    for file in candidates:
        if file.read_text(encoding="utf-8").lstrip().startswith("$ANSIBLE_VAULT"):
            continue
        data = _read_yaml(file)
        if data is None:
            continue
        if not isinstance(data, Mapping):
            raise InventoryError(f"{file}: expected a mapping of variables")
        merged.update(data)
    return merged


def resolve(value: Any, variables: Mapping[str, Any], depth: int = 5) -> Any:
    """Replace ``{{ name }}`` by the variable's value; anything fancier stays as it is."""
    if not isinstance(value, str) or "{{" not in value or depth == 0:
        return value
    whole = _REFERENCE.fullmatch(value.strip())
    if whole and whole.group(1) in variables:
        return resolve(variables[whole.group(1)], variables, depth - 1)

    def substitute(match: re.Match[str]) -> str:
        found = variables.get(match.group(1))
        if found is None or isinstance(found, Mapping | list):
            return match.group(0)
        return str(resolve(found, variables, depth - 1))

    return resolve(_REFERENCE.sub(substitute, value), variables, depth - 1)


def _first(variables: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        value = variables.get(name)
        if value is not None and not isinstance(value, VaultValue):
            return resolve(value, variables)
    return None


def _ssh_options(args: str) -> dict[str, str]:
    """``-o Key=Value`` pairs from ``ansible_ssh_common_args`` / ``ansible_ssh_extra_args`` (keys lower-cased)."""
    try:
        words = shlex.split(args)
    except ValueError:
        words = args.split()
    options: dict[str, str] = {}
    for index, word in enumerate(words):
        option = None
        if word == "-o" and index + 1 < len(words):
            option = words[index + 1]
        elif word.startswith("-o") and len(word) > 2:
            option = word[2:]
        if option and "=" in option:
            key, _, value = option.partition("=")
            options[key.strip().lower()] = value.strip()
    return options


def _make_host(name: str, variables: Mapping[str, Any], groups: list[tuple[int, str]]) -> InventoryHost:
    address = _first(variables, "ansible_host", "ansible_ssh_host") or name
    raw_port = _first(variables, "ansible_port", "ansible_ssh_port")
    try:
        port = int(raw_port) if raw_port is not None else 22
    except (TypeError, ValueError):
        raise InventoryError(f"{name}: ansible_port: expected a port number, got {raw_port!r}") from None
    user = _first(variables, "ansible_user", "ansible_ssh_user") or getpass.getuser()
    key_file = _first(variables, "ansible_ssh_private_key_file", "ansible_private_key_file")
    password = _first(variables, "ansible_password", "ansible_ssh_pass")
    args = " ".join(str(_first(variables, n) or "") for n in ("ansible_ssh_common_args", "ansible_ssh_extra_args"))
    options = _ssh_options(args)
    known = tuple(options["userknownhostsfile"].split()) if "userknownhostsfile" in options else ()
    strict = options.get("stricthostkeychecking", "yes").lower() not in ("no", "off", "accept-new")
    python = _first(variables, "ansible_python_interpreter")
    if not isinstance(python, str) or "{{" in python or python.startswith("auto"):
        python = "python3"
    connection = str(_first(variables, "ansible_connection") or "ssh")
    return InventoryHost(
        name=name,
        address=str(address),
        port=port,
        user=str(user),
        key_file=str(key_file) if key_file else None,
        password=str(password) if password else None,
        groups=tuple(group for _, group in sorted(set(groups))),
        known_hosts_files=known,
        strict_host_key_checking=strict,
        python=python,
        connection=connection,
    )


def select(hosts: list[InventoryHost], limit: str | None) -> list[InventoryHost]:
    """Hosts whose name or one of whose groups is in the comma-separated ``limit`` (all when empty)."""
    if not limit:
        return hosts
    wanted = {part.strip() for part in limit.split(",") if part.strip()}
    return [h for h in hosts if h.name in wanted or wanted.intersection(h.groups)]
