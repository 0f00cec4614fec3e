"""The SSH probe against a real SSH server: an in-process paramiko server on 127.0.0.1 that answers exec requests.

A real sshd needs root and a lab namespace; paramiko's server side speaks the same protocol, so the client
code (host keys, public-key auth, exec, timeouts) runs exactly as it does against a host.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import paramiko.common
import pytest

from captcha_fleet.apps.doctor.checks import Status, host_result
from captcha_fleet.apps.doctor.ssh_probe import parse_df_available_kb, probe_host, probe_hosts
from captcha_fleet.contract.inventory import InventoryHost

DF_OUTPUT = (
    "Filesystem     1024-blocks     Used Available Capacity Mounted on\n"
    "/dev/vda1         20511312 10255656   9193064      53% /\n"
)


class _Server(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey, replies: dict[str, tuple[int, str, str]]) -> None:
        self.client_key = client_key
        self.replies = replies

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == "deploy" and key == self.client_key:
            return paramiko.common.AUTH_SUCCESSFUL
        return paramiko.common.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return (
            paramiko.common.OPEN_SUCCEEDED
            if kind == "session"
            else paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        )

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        status, out, err = self.replies.get(command.decode(), (127, "", "sh: command not found\n"))

        def answer() -> None:
            # EOF, not close: a close could overtake the reply to the exec request, which the client
            # reads as "Channel closed". The client closes the channel once it has read everything.
            try:
                channel.sendall(out.encode())
                channel.sendall_stderr(err.encode())
                channel.send_exit_status(status)
                channel.shutdown_write()
            except OSError:
                pass  # the client went away (a test that only wanted the connection)

        threading.Thread(target=answer, daemon=True).start()
        return True


@dataclass
class FakeSshd:
    port: int
    host_key: paramiko.PKey
    client_key_file: Path
    known_hosts: Path

    def host(self, **overrides: object) -> InventoryHost:
        fields: dict[str, object] = {
            "name": "w1",
            "address": "127.0.0.1",
            "port": self.port,
            "user": "deploy",
            "key_file": str(self.client_key_file),
            "known_hosts_files": (str(self.known_hosts),),
        }
        fields.update(overrides)
        return InventoryHost(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeSshd]:
    directory = tmp_path_factory.mktemp("sshd")
    host_key = paramiko.RSAKey.generate(1024)
    client_key = paramiko.RSAKey.generate(1024)
    key_file = directory / "id_rsa"
    client_key.write_private_key_file(str(key_file))
    replies = {
        "python3 --version": (0, "Python 3.11.2\n", ""),
        "/opt/py39/bin/python3 --version": (0, "Python 3.9.18\n", ""),
        "df -Pk /": (0, DF_OUTPUT, ""),
    }
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.get_name()} {host_key.get_base64()}\n", encoding="utf-8")
    transports: list[paramiko.Transport] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(host_key)
            transports.append(transport)

            def handle(t: paramiko.Transport = transport) -> None:
                # Each connection negotiates in its own thread: a slow handshake never delays the next banner.
                try:
                    t.start_server(server=_Server(client_key, replies))
                except (paramiko.SSHException, EOFError, OSError):
                    return
                # Keep a reference to every channel: a collected Channel closes itself.
                channels: list[paramiko.Channel] = []
                while t.is_active():
                    channel = t.accept(timeout=0.5)
                    if channel is not None:
                        channels.append(channel)

            threading.Thread(target=handle, daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield FakeSshd(port, host_key, key_file, known_hosts)
    stop.set()
    listener.close()
    thread.join(2)
    for transport in transports:
        transport.close()


def test_reads_python_and_free_disk(sshd: FakeSshd) -> None:
    report = probe_host(sshd.host(), timeout_s=5)
    assert report.error is None, report.error
    assert report.python_version == (3, 11, 2)
    assert report.free_kb == 9193064
    result = host_result(report, (3, 11), 1024 * 1024)
    assert result.status is Status.OK
    assert "Python 3.11.2" in result.detail and "8.8 GiB free on /" in result.detail
    assert result.data["checked"] == ["ssh", "python3 --version", "df -Pk /"]  # what doctor did on the host


def test_old_python_and_small_disk_fail(sshd: FakeSshd) -> None:
    report = probe_host(sshd.host(python="/opt/py39/bin/python3"), timeout_s=5)
    result = host_result(report, (3, 11), 20 * 1024 * 1024)
    assert result.status is Status.FAIL
    assert "Python 3.9.18 is older than 3.11" in result.detail
    assert "MiB free on /" in result.detail


def test_missing_python_fails(sshd: FakeSshd) -> None:
    report = probe_host(sshd.host(python="python3.99"), timeout_s=5)
    result = host_result(report, (3, 11), 1)
    assert result.status is Status.FAIL
    assert "python3.99 not found" in result.detail


def test_unknown_host_key_is_refused_with_the_fix(sshd: FakeSshd, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("", encoding="utf-8")
    report = probe_host(sshd.host(known_hosts_files=(str(empty),)), timeout_s=5)
    assert report.error is not None
    assert "is not in" in report.error and f"ssh-keyscan -p {sshd.port} 127.0.0.1" in report.error


def test_unknown_host_key_accepted_when_checking_is_off(sshd: FakeSshd) -> None:
    report = probe_host(sshd.host(known_hosts_files=(), strict_host_key_checking=False), timeout_s=5)
    assert report.error is None


def test_wrong_key_fails_authentication(sshd: FakeSshd, tmp_path: Path) -> None:
    other = tmp_path / "other"
    paramiko.RSAKey.generate(1024).write_private_key_file(str(other))
    report = probe_host(sshd.host(key_file=str(other)), timeout_s=5)
    assert report.error is not None
    assert "authentication failed for user 'deploy'" in report.error


def test_silent_port_times_out_in_seconds() -> None:
    # A listening socket that never speaks: the TCP handshake succeeds, the SSH banner never comes.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = int(silent.getsockname()[1])
        host = InventoryHost(name="mute", address="127.0.0.1", port=port, user="deploy")
        started = time.monotonic()
        report = probe_host(host, timeout_s=1)
        elapsed = time.monotonic() - started
    assert report.error is not None
    assert f"127.0.0.1:{port}" in report.error
    assert elapsed < 5


def test_hosts_are_probed_in_parallel(sshd: FakeSshd) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        mute_port = int(silent.getsockname()[1])
        hosts = [InventoryHost(name=f"mute{i}", address="127.0.0.1", port=mute_port, user="deploy") for i in range(4)]
        started = time.monotonic()
        reports = probe_hosts([*hosts, sshd.host()], timeout_s=1)
        elapsed = time.monotonic() - started
    assert [r.host.name for r in reports] == ["mute0", "mute1", "mute2", "mute3", "w1"]
    assert reports[-1].error is None
    assert elapsed < 3.5  # four 1 s timeouts at once, not one after another


def test_parse_df() -> None:
    assert parse_df_available_kb(DF_OUTPUT) == 9193064
    assert parse_df_available_kb("garbage") is None
