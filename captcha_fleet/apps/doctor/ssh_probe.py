"""Reach inventory hosts over SSH with paramiko, in parallel, and read their Python version and free disk.

paramiko answers in seconds with a hard timeout per host, where an Ansible ad-hoc run would spend that long
starting up; the probe follows the inventory's host-key policy (unknown keys are refused unless the inventory
says ``StrictHostKeyChecking=no``), as Ansible with ``host_key_checking = True`` would.
"""

from __future__ import annotations

import contextlib
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import paramiko

from captcha_fleet.contract.inventory import InventoryHost

_PYTHON_VERSION = re.compile(r"Python (\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class HostReport:
    """What one probe found; ``error`` is set when the host could not be reached or read."""

    host: InventoryHost
    error: str | None = None
    python_version: tuple[int, int, int] | None = None
    python_error: str | None = None
    free_kb: int | None = None
    disk_error: str | None = None

    @property
    def target(self) -> str:
        """``user@address:port`` as the operator would type it."""
        return f"{self.host.user}@{self.host.address}:{self.host.port}"


class _UnknownHostKeyError(Exception):
    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__("unknown host key")
        self.key = key


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse a host whose key is in no known_hosts file, keeping the key for the message."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKeyError(key)


class _AcceptUnknown(paramiko.MissingHostKeyPolicy):
    """Accept (without saving) a host whose key is unknown: the inventory turned host key checking off."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        return None


def probe_host(host: InventoryHost, timeout_s: float) -> HostReport:
    """Connect, run ``python3 --version`` and ``df -Pk /``; never raises."""
    client = paramiko.SSHClient()
    try:
        _load_known_hosts(client, host)
        client.set_missing_host_key_policy(_RefuseUnknown() if host.strict_host_key_checking else _AcceptUnknown())
        try:
            pkey = _private_key(host)
            client.connect(
                host.address,
                port=host.port,
                username=host.user,
                password=host.password,
                pkey=pkey,
                timeout=timeout_s,
                banner_timeout=timeout_s,
                auth_timeout=timeout_s,
                channel_timeout=timeout_s,
                allow_agent=pkey is None,
                look_for_keys=host.key_file is None,
            )
        except Exception as exc:
            return HostReport(host, error=_connect_error(host, exc, timeout_s))
        python_version, python_error = _python_version(client, host, timeout_s)
        free_kb, disk_error = _free_kb(client, timeout_s)
        return HostReport(
            host,
            python_version=python_version,
            python_error=python_error,
            free_kb=free_kb,
            disk_error=disk_error,
        )
    finally:
        client.close()


def probe_hosts(hosts: list[InventoryHost], timeout_s: float, parallel: int = 32) -> list[HostReport]:
    """Probe every host at once (bounded by ``parallel``), in the inventory's order."""
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(parallel, len(hosts)), thread_name_prefix="doctor-ssh") as pool:
        return list(pool.map(lambda h: probe_host(h, timeout_s), hosts))


def _private_key(host: InventoryHost) -> paramiko.PKey | None:
    """The inventory's key file, its type detected; a passphrase-protected key is left to the ssh-agent.

    Handing paramiko ``key_filename`` instead would make it try every key class in turn and report the last
    class's parse error rather than the authentication failure.
    """
    if host.key_file is None:
        return None
    try:
        return paramiko.PKey.from_path(Path(host.key_file).expanduser())
    except paramiko.PasswordRequiredException:
        return None


def _load_known_hosts(client: paramiko.SSHClient, host: InventoryHost) -> None:
    with contextlib.suppress(OSError, paramiko.SSHException):
        client.load_system_host_keys()
    for name in host.known_hosts_files:
        path = Path(name).expanduser()
        if path.is_file():
            with contextlib.suppress(OSError, paramiko.SSHException):
                client.load_host_keys(str(path))


def _connect_error(host: InventoryHost, exc: Exception, timeout_s: float) -> str:
    """Why the SSH connection failed, in words that point at the fix (first explanation that fits)."""
    for explain in (_trust_error, _network_error, _key_file_error, _transport_error):
        message = explain(host, exc, timeout_s)
        if message is not None:
            return message
    return f"{host.address}:{host.port}: {type(exc).__name__}: {exc}"


def _trust_error(host: InventoryHost, exc: Exception, _timeout_s: float) -> str | None:
    """An unknown or changed host key, or a refused login."""
    where = f"{host.address}:{host.port}"
    if isinstance(exc, _UnknownHostKeyError):
        files = ", ".join(host.known_hosts_files) or "~/.ssh/known_hosts"
        return (
            f"host key of {where} ({exc.key.get_name()}) is not in {files}; "
            f"check it and add it, e.g. ssh-keyscan -p {host.port} {host.address} >> {files.split(', ')[0]}"
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return f"host key of {where} does not match known_hosts: the host was reinstalled, or this is not it"
    if isinstance(exc, paramiko.AuthenticationException):
        how = f"key {host.key_file}" if host.key_file else "the agent or ~/.ssh keys"
        return f"{where}: authentication failed for user {host.user!r} with {how}"
    return None


def _network_error(host: InventoryHost, exc: Exception, timeout_s: float) -> str | None:
    """No answer, nothing listening, or a name that does not resolve."""
    where = f"{host.address}:{host.port}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"{where}: no answer within {timeout_s:g} s (firewall, wrong address, or the host is down)"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError | ConnectionRefusedError):
        return f"{where}: connection refused (sshd not running or another port?)"
    if isinstance(exc, socket.gaierror):
        return f"{host.address}: the name does not resolve"
    return None


def _key_file_error(host: InventoryHost, exc: Exception, _timeout_s: float) -> str | None:
    """The inventory's private key is missing or unusable."""
    if isinstance(exc, FileNotFoundError):
        return f"private key {host.key_file} not found"
    if isinstance(exc, paramiko.SSHException) and "key" in str(exc).lower() and host.key_file:
        return f"cannot use private key {host.key_file}: {exc}"
    return None


def _transport_error(host: InventoryHost, exc: Exception, timeout_s: float) -> str | None:
    """Something that is not sshd answered, or the OS's own reason."""
    where = f"{host.address}:{host.port}"
    if isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower():
        return f"{where}: no SSH banner within {timeout_s:g} s (something else listens there, or sshd is stuck)"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{where}: {exc.strerror}"
    return None


def _run(client: paramiko.SSHClient, command: str, timeout_s: float) -> tuple[int, str, str]:
    _stdin, stdout, stderr = client.exec_command(command, timeout=timeout_s)
    out = stdout.read().decode("utf-8", "replace")
    err = stderr.read().decode("utf-8", "replace")
    return stdout.channel.recv_exit_status(), out, err


def _python_version(
    client: paramiko.SSHClient, host: InventoryHost, timeout_s: float
) -> tuple[tuple[int, int, int] | None, str | None]:
    try:
        status, out, err = _run(client, f"{host.python} --version", timeout_s)
    except (OSError, paramiko.SSHException) as exc:
        return None, f"could not run {host.python} --version: {exc}"
    # Python 2 and some 3.x print the version to stderr.
    match = _PYTHON_VERSION.search(out + err)
    if status != 0 or match is None:
        return None, f"{host.python} not found or not Python (exit {status}): {(err or out).strip()[:120]}"
    return (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)), None


def _free_kb(client: paramiko.SSHClient, timeout_s: float) -> tuple[int | None, str | None]:
    try:
        status, out, err = _run(client, "df -Pk /", timeout_s)
    except (OSError, paramiko.SSHException) as exc:
        return None, f"could not run df: {exc}"
    free = parse_df_available_kb(out)
    if status != 0 or free is None:
        return None, f"df -Pk / failed (exit {status}): {(err or out).strip()[:120]}"
    return free, None


def parse_df_available_kb(text: str) -> int | None:
    """The ``Available`` column of ``df -Pk`` (POSIX format: one line per filesystem after the header)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    fields = lines[-1].split()
    try:
        return int(fields[-3])
    except (IndexError, ValueError):
        return None
