"""Start a private ``redis-server`` on a free loopback port: for the demo, tests and benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from captcha_fleet.contract.start_stop import StartStop


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def terminate(process: subprocess.Popen[bytes] | None, timeout_s: float = 5.0) -> None:
    """SIGTERM a child if it still runs, SIGKILL it after ``timeout_s``: the one stop of the servers we start."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class ServerTls:
    """Certificate files for a TLS-only server (``port 0``, ``tls-port``); clients must trust ``ca_file``."""

    cert_file: Path
    key_file: Path
    ca_file: Path


class RedisServer(StartStop):
    """A throwaway redis-server process with its own directory; ``stop()`` removes both."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        appendonly: bool = False,
        password: str | None = None,
        also_bind: tuple[str, ...] = (),
        extra_conf: str = "",
        tls: ServerTls | None = None,
        username: str | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run `make setup` (it installs redis-server)")
        self.binary = binary
        self.host = host
        self.port = port or free_port(host)
        self.appendonly = appendonly
        self.password = password
        self.also_bind = also_bind  # more addresses to listen on, e.g. loopback beside a lab bridge
        self.extra_conf = extra_conf  # more redis.conf lines (replicaof, aclfile, min-replicas-to-write, ...)
        self.tls = tls
        self.username = username  # the ACL user this object's own clients log in as
        self.dir = Path(tempfile.mkdtemp(prefix="captcha-fleet-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of this server (with the password, if any: keep it out of argv and logs)."""
        auth = f"{self.username or ''}:{self.password}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}{self.host}:{self.port}/0?ssl_ca_certs={self.tls.ca_file}"
        return f"redis://{auth}{self.host}:{self.port}/0"

    def client_kwargs(self) -> dict[str, Any]:
        """Arguments for ``redis.Redis`` to reach this server as its own user."""
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port, "password": self.password}
        if self.username:
            kwargs["username"] = self.username
        if self.tls is not None:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.tls.ca_file), ssl_check_hostname=False)
        return kwargs

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        # Settings go in a file so a password never shows in the process list.
        conf = self.dir / "redis.conf"
        lines = [f"requirepass {self.password}"] if self.password and not self.username else []
        if self.tls is not None:
            lines += [
                f"tls-cert-file {self.tls.cert_file}",
                f"tls-key-file {self.tls.key_file}",
                f"tls-ca-cert-file {self.tls.ca_file}",
                "tls-auth-clients optional",
                "tls-replication yes",
            ]
        conf.write_text("\n".join([*lines, self.extra_conf, ""]), encoding="utf-8")
        conf.chmod(0o600)
        args = [
            self.binary,
            str(conf),
            "--bind", self.host, *self.also_bind,
            *(["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always" if self.appendonly else "everysec",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--maxclients", "10000",
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(**self.client_kwargs(), socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on {self.host}:{self.port}") from None
                time.sleep(0.05)
        client.close()
        return self

    def client(self) -> redis.Redis:
        """A client for this server (password included); built here, not by redis_connect: no URL, no retries."""
        return redis.Redis(**self.client_kwargs(), socket_timeout=10)

    def kill(self) -> None:
        """SIGKILL the server (a crash), keeping its directory so ``start()`` recovers from the AOF."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        terminate(self.process)
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)
