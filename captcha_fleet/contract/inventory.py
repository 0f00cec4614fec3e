"""Read an Ansible inventory through Ansible itself: hosts, groups and the connection settings ``doctor`` needs.

Whatever ``ansible-playbook -i`` accepts (INI or YAML files, host ranges, directories with ``group_vars/`` and
``host_vars/``, vault-encrypted files, executable scripts, inventory plugins such as ``constructed`` or a cloud's)
is read by ``ansible-inventory --list``, so the controller and ``doctor`` see exactly the hosts a playbook run would.

``ansible-inventory`` runs as a plain child process, not through ansible-runner: a runner writes the whole process
environment and the command's stdout (which holds the decrypted values of vault files) into its artifacts. The child
gets this process's environment without the fleet's own secrets (a dynamic inventory may need its cloud credentials,
never the API key or the Redis URL); its output is parsed in memory and only the connection settings are kept.
An error names the inventory source and quotes what Ansible said, never a variable's value.

This module is contract-layer code: it imports nothing from ``worker`` or ``controller``.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The fleet's own secrets: a child process that reads an inventory never needs them.
FLEET_SECRET_ENV = ("CAPTCHAAI_KEY", "REDIS_URL")
# A source Ansible cannot parse is an error, not an empty inventory (a controller would drain every host).
_STRICT_ENV = {
    "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
    "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_FORCE_COLOR": "0",
}
_VAULT_KEY = "__ansible_vault"


class InventoryError(ValueError):
    """The inventory cannot be read; the message names the source and what Ansible said."""


@dataclass(frozen=True)
class InventoryHost:
    """One host and the connection settings ``doctor`` needs (as Ansible resolved them)."""

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
    # Every variable as ansible-inventory printed it (host level only when read with ``export``); may hold secrets.
    variables: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Inventory:
    """Every host of an inventory (in Ansible's order) and every group's hosts, children included."""

    source: str
    hosts: tuple[InventoryHost, ...]
    groups: Mapping[str, tuple[str, ...]]

    def names(self, group: str = "all") -> list[str]:
        """Host names in ``group`` (and its children); all hosts for ``all``."""
        if group == "all":
            return [h.name for h in self.hosts]
        return list(self.groups.get(group, ()))


def describe_sources(sources: str | Path | Sequence[str | Path]) -> str:
    """The sources as an operator typed them (``a, b``)."""
    if isinstance(sources, str | Path):
        return str(sources)
    return ", ".join(str(s) for s in sources)


def read_inventory(
    sources: str | Path | Sequence[str | Path],
    *,
    vault_password_file: str | Path | None = None,
    limit: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
    export: bool = False,
) -> Inventory:
    """Run ``ansible-inventory --list`` on ``sources`` (each as ``-i`` takes it) and parse what it prints.

    ``limit`` is an Ansible host pattern (``workers:!w3``), applied by Ansible; ``env`` adds variables for the
    child (``ANSIBLE_CONFIG`` for instance); ``vault_password_file`` decrypts vault files and ``!vault`` values.
    ``export`` keeps each host's own variables apart from its groups' (``--export``), for re-declaring a host.
    """
    listed = [str(s) for s in ([sources] if isinstance(sources, str | Path) else sources)]
    where = describe_sources(sources)
    command = [_ansible_inventory(), "--list"]
    for source in listed:
        command += ["-i", source]
    if vault_password_file is not None:
        command += ["--vault-password-file", str(vault_password_file)]
    if limit:
        command += ["--limit", limit]
    if export:
        command.append("--export")
    child_env = {k: v for k, v in os.environ.items() if k not in FLEET_SECRET_ENV}
    child_env.update(env or {})
    child_env.update(_STRICT_ENV)
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=child_env,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise InventoryError(f"inventory {where}: ansible-inventory gave no answer within {timeout_s:g} s") from None
    except OSError as exc:
        hint = " (install the controller extra: pip install 'captcha-fleet[controller]')" if not _has_ansible() else ""
        raise InventoryError(f"inventory {where}: cannot run ansible-inventory: {exc.strerror or exc}{hint}") from None
    if done.returncode != 0:
        raise InventoryError(f"inventory {where}: Ansible could not read it: {ansible_said(done.stderr)}")
    try:
        data = json.loads(done.stdout)
    except json.JSONDecodeError:
        said = ansible_said(done.stderr)
        raise InventoryError(f"inventory {where}: ansible-inventory printed no JSON: {said}") from None
    return parse_inventory_list(data, where, vault_password_file)


def ansible_said(stderr: str, limit: int = 1500) -> str:
    """What Ansible said, short: its errors, then one line per plugin that refused a source and why.

    ``ansible-inventory`` repeats each refusal three times (the warning, the error and its cause) and names
    Python classes; an operator needs the file, the plugins' one-line reasons and, for a file that is not
    inventory at all, where to put it instead. Other output (a script's own stderr) is kept, truncated.
    """
    errors: list[str] = []
    refusals: list[str] = []
    other: list[str] = []
    said: list[str] = []  # the refusals' own words: ansible-inventory repeats them as their cause
    for raw in stderr.splitlines():
        line = raw.strip()
        if not line or line == "<<< caused by >>>" or line.startswith("Origin:"):
            continue
        if line.startswith("[ERROR]:"):
            _add_once(errors, line.removeprefix("[ERROR]:").strip())
        elif (refused := _PLUGIN_REFUSAL.match(line)) is not None:
            said.append(refused.group(2))
            reason = _CLASS_NAME.sub(lambda m: m.group(1).rsplit(".", 1)[-1].lstrip("_"), refused.group(2))
            _add_once(refusals, f"{refused.group(1)} plugin: {_clip(reason, 160)}")
        elif not line.startswith("Failed to parse inventory") and not any(line in r for r in said):
            _add_once(other, _clip(line, 200))
    sources = [m.group(1) for e in errors if (m := _UNPARSED.match(e)) is not None]
    hint = [_NOT_INVENTORY_HINT.format(name=Path(source).name) for source in sources if _looks_like_data(source)]
    lines = errors + [f"- {r}" for r in refusals] + other[:5] + hint
    text = "\n".join(lines) or "no message (exit status only)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PLUGIN_REFUSAL = re.compile(r"\[WARNING\]: Failed to parse inventory with '([^']+)' plugin: (.*)")
_CLASS_NAME = re.compile(r"<class '([\w.]+)'>")
_UNPARSED = re.compile(r"Completely failed to parse inventory source (.+)$")
_NOT_INVENTORY_HINT = (
    "hint: {name} is not inventory, but Ansible reads every file of an inventory directory: name it {name}.txt"
    " (Ansible skips .txt) or keep it elsewhere"
)


def _looks_like_data(source: str) -> bool:
    """A file with no inventory extension (``known_hosts``, ``notes``): most likely not meant as inventory."""
    return Path(source).suffix.lower() not in {".yml", ".yaml", ".json", ".ini", ".toml", ".py", ".sh"}


def _add_once(lines: list[str], line: str) -> None:
    if line not in lines:
        lines.append(line)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has_ansible() -> bool:
    import importlib.util

    return importlib.util.find_spec("ansible") is not None


def _ansible_inventory() -> str:
    """``ansible-inventory`` beside this interpreter (a venv need not be on PATH), else from PATH."""
    beside = Path(sys.executable).parent / "ansible-inventory"
    if beside.exists():
        return str(beside)
    return shutil.which("ansible-inventory") or "ansible-inventory"


def parse_inventory_list(
    data: Any, where: str = "inventory", vault_password_file: str | Path | None = None
) -> Inventory:
    """An :class:`Inventory` from the JSON of ``ansible-inventory --list``."""
    if not isinstance(data, Mapping):
        raise InventoryError(f"inventory {where}: ansible-inventory printed {type(data).__name__}, not a mapping")
    meta = data.get("_meta") or {}
    hostvars: Mapping[str, Mapping[str, Any]] = meta.get("hostvars") or {}
    order: list[str] = []
    members: dict[str, list[str]] = {}

    def walk(group: str, lineage: tuple[str, ...]) -> None:
        if group in lineage:
            return  # Ansible refuses cycles already; never loop here
        body = data.get(group) or {}
        for host in body.get("hosts") or ():
            if host not in members:
                members[host] = []
                order.append(host)
            for name in (*lineage, group):
                if name not in members[host]:
                    members[host].append(name)
        for child in body.get("children") or ():
            walk(str(child), (*lineage, group))

    walk("all", ())
    groups: dict[str, list[str]] = {}
    for host in order:
        for group in members[host]:
            groups.setdefault(group, []).append(host)
    vault = _VaultReader(vault_password_file)
    hosts = tuple(_make_host(name, hostvars.get(name) or {}, members[name], vault) for name in order)
    return Inventory(source=where, hosts=hosts, groups={g: tuple(h) for g, h in groups.items()})


class _VaultReader:
    """Decrypts an inline ``!vault`` connection value with Ansible's vault library, when a password is given."""

    def __init__(self, password_file: str | Path | None) -> None:
        self.password_file = password_file
        self._lib: Any = None

    def decrypt(self, ciphertext: str, host: str, variable: str) -> str:
        """The plain value; a value that cannot be decrypted is an error, never a silent default (``doctor``
        probed as the local user when an inline-vaulted ``ansible_user`` could not be read)."""
        if self.password_file is None:
            raise InventoryError(
                f"host {host}: {variable} is vault-encrypted: give the vault password file (--vault-password-file)"
            )
        from ansible.parsing.dataloader import DataLoader
        from ansible.parsing.vault import VaultLib, get_file_vault_secret

        if self._lib is None:  # Ansible's own reading of the file: a plain password or an executable client
            secret = get_file_vault_secret(filename=str(self.password_file), loader=DataLoader())
            secret.load()
            self._lib = VaultLib([("default", secret)])
        try:
            return str(self._lib.decrypt(ciphertext).decode("utf-8"))
        except Exception:  # a wrong password; the ciphertext and Ansible's message are never echoed
            raise InventoryError(
                f"host {host}: {variable} is vault-encrypted and the vault password does not decrypt it"
            ) from None


def _make_host(name: str, variables: Mapping[str, Any], groups: Iterable[str], vault: _VaultReader) -> InventoryHost:
    def first(*names: str) -> Any:
        for var in names:
            value = variables.get(var)
            if isinstance(value, Mapping) and _VAULT_KEY in value:
                value = vault.decrypt(str(value[_VAULT_KEY]), name, var)
            if value is not None:
                return _render(value, variables)
        return None

    raw_port = first("ansible_port", "ansible_ssh_port")
    try:
        port = int(raw_port) if raw_port is not None else 22
    except (TypeError, ValueError):
        raise InventoryError(f"host {name}: ansible_port is not a port number") from None
    key_file = first("ansible_ssh_private_key_file", "ansible_private_key_file")
    password = first("ansible_password", "ansible_ssh_pass")
    args = " ".join(str(first(n) or "") for n in ("ansible_ssh_common_args", "ansible_ssh_extra_args"))
    options = _ssh_options(args)
    python = first("ansible_python_interpreter")
    if not isinstance(python, str) or "{{" in python or python.startswith("auto"):
        python = "python3"
    return InventoryHost(
        name=name,
        address=str(first("ansible_host", "ansible_ssh_host") or name),
        port=port,
        user=str(first("ansible_user", "ansible_ssh_user") or getpass.getuser()),
        key_file=str(key_file) if key_file else None,
        password=str(password) if password else None,
        groups=tuple(groups),
        known_hosts_files=tuple(options["userknownhostsfile"].split()) if "userknownhostsfile" in options else (),
        strict_host_key_checking=options.get("stricthostkeychecking", "yes").lower() not in ("no", "off", "accept-new"),
        python=python,
        connection=str(first("ansible_connection") or "ssh"),
        variables=dict(variables),
    )


def _render(value: Any, variables: Mapping[str, Any]) -> Any:
    """``{{ ... }}`` in a connection setting, rendered by Ansible's templar with the host's variables."""
    if not isinstance(value, str) or "{{" not in value:
        return value
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    try:
        from ansible.template import trust_as_template  # ansible-core 2.19+: inventory text is not trusted
    except ImportError:  # older cores template any string

        def trust_as_template(text: str) -> str:
            return text

    try:
        return Templar(loader=DataLoader(), variables=dict(variables)).template(trust_as_template(value))
    except Exception:  # an undefined variable or a lookup that needs a play: leave it as written
        return value


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
