"""A throwaway primary, its replicas and three ``redis-server --sentinel`` processes on loopback.

For the failover tests and the benchmark: the same binaries and settings the redis role deploys, on free ports,
so a kill -9 of the primary exercises the real Sentinel election and the clients' real reconnection.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import redis

from captcha_fleet.contract.start_stop import StartStop
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.local_servers.redis_server import RedisServer, ServerTls, free_port, terminate


def ask_for_primary(sentinels: Iterable[Callable[[], redis.Redis]], master_name: str) -> tuple[str, int] | None:
    """The (host, port) of ``master_name``'s primary as the first Sentinel that answers names it (each of
    ``sentinels`` opens a client to one), or None when none answers: a Sentinel down or cut off is skipped."""
    for connect in sentinels:
        try:
            with connect() as client:
                host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name)
            return (host.decode() if isinstance(host, bytes) else str(host)), int(port)
        except (redis.RedisError, OSError, TypeError, ValueError):
            continue
    return None


def sentinels_ready(sentinels: Sequence[Callable[[], redis.Redis]], master_name: str, replicas: int) -> bool:
    """True when every Sentinel knows ``replicas`` replicas of ``master_name`` and every other Sentinel: only then
    can a failover be elected. A Sentinel that does not answer is not ready."""
    try:
        for connect in sentinels:
            with connect() as client:
                info = client.sentinel_master(master_name)
            if info["num-slaves"] < replicas or info["num-other-sentinels"] < len(sentinels) - 1:
                return False
    except (redis.RedisError, OSError, KeyError, TypeError):
        return False
    return True


class SentinelProcess:
    """One Sentinel: ``redis-server sentinel.conf --sentinel`` (it rewrites its own config file)."""

    def __init__(
        self, conf_text: str, host: str = "127.0.0.1", tls: ServerTls | None = None, password: str | None = None
    ) -> None:
        self.host = host
        self.tls = tls
        self.password = password
        self.port = free_port(host)
        self.dir = Path(tempfile.mkdtemp(prefix="captcha-fleet-sentinel-"))
        conf = self.dir / "sentinel.conf"
        conf.write_text(f"port {self.port}\nbind {host}\ndir {self.dir}\n{conf_text}", encoding="utf-8")
        conf.chmod(0o600)
        self.conf = conf
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the Sentinel (does not wait: the caller waits for the whole set)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run `make setup`")
        args = [binary, str(self.conf), "--sentinel", "--daemonize", "no", "--loglevel", "warning"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self) -> redis.Redis:
        """A client talking to this Sentinel (not a data node: redis_connect's clients are for the fleet's data)."""
        if self.tls is None:
            return redis.Redis(
                host=self.host, port=self.port, password=self.password, socket_timeout=2, decode_responses=True
            )
        return redis.Redis(
            host=self.host, port=self.port, password=self.password, socket_timeout=2, decode_responses=True,
            ssl=True, ssl_ca_certs=str(self.tls.ca_file),
        )  # fmt: skip

    def stop(self) -> None:
        """Stop it and remove its directory."""
        terminate(self.process)
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelSet(StartStop):
    """A primary, ``replicas`` replicas and ``sentinels`` Sentinels with quorum ``sentinels // 2 + 1``."""

    def __init__(
        self,
        master_name: str = "fleet",
        replicas: int = 2,
        sentinels: int = 3,
        password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10_000,
        tls: ServerTls | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.master_name = master_name
        self.password = password
        self.tls = tls
        self.quorum = sentinels // 2 + 1
        # Every data node carries masterauth: a node that returns after a failover comes back as a replica.
        auth = f"masterauth {password}\n" if password else ""
        self.primary = RedisServer(password=password, extra_conf=auth, tls=tls)
        self.replicas = [
            RedisServer(password=password, extra_conf=auth + f"replicaof 127.0.0.1 {self.primary.port}\n", tls=tls)
            for _ in range(replicas)
        ]
        sentinel_conf = (
            f"sentinel monitor {master_name} 127.0.0.1 {self.primary.port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {master_name} 1\n"
        )
        if password:
            sentinel_conf += f"sentinel auth-pass {master_name} {password}\n"
        if sentinel_password:
            sentinel_conf += f"requirepass {sentinel_password}\nsentinel sentinel-pass {sentinel_password}\n"
        if tls is not None:
            sentinel_conf += (
                f"port 0\ntls-port {{port}}\ntls-cert-file {tls.cert_file}\ntls-key-file {tls.key_file}\n"
                f"tls-ca-cert-file {tls.ca_file}\ntls-auth-clients optional\ntls-replication yes\n"
            )
        self.sentinels = [SentinelProcess(sentinel_conf, tls=tls, password=sentinel_password) for _ in range(sentinels)]
        for sentinel in self.sentinels:
            if tls is not None:  # the TLS port is the one clients use; the plain port is closed
                text = sentinel.conf.read_text().replace(f"port {sentinel.port}\n", "", 1)
                sentinel.conf.write_text(text.replace("{port}", str(sentinel.port)))

    @property
    def nodes(self) -> list[RedisServer]:
        """Every data node, primary first as started (roles change after a failover)."""
        return [self.primary, *self.replicas]

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL clients use (password included: keep it in the environment)."""
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        query = f"?ssl_ca_certs={self.tls.ca_file}" if self.tls else ""
        return f"{scheme}://{auth}{hosts}/{self.master_name}/0{query}"

    def start(self, timeout_s: float = 30.0) -> SentinelSet:
        """Start the nodes and Sentinels; return once every Sentinel sees the replicas and its peers."""
        try:
            for node in self.nodes:
                node.start()
            for sentinel in self.sentinels:
                sentinel.start()
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Until every Sentinel knows all replicas and the other Sentinels (so a failover can be elected)."""
        clients = [sentinel.client for sentinel in self.sentinels]
        if not wait_until(lambda: sentinels_ready(clients, self.master_name, len(self.replicas)), timeout_s, 0.1):
            raise RuntimeError("the Sentinels did not discover the replicas and each other in time")

    def primary_port(self) -> int:
        """The port of the primary the Sentinels currently agree on (asks the first one that answers)."""
        answer = ask_for_primary([sentinel.client for sentinel in self.sentinels], self.master_name)
        if answer is None:
            raise RuntimeError("no Sentinel answered")
        return answer[1]

    def current_primary(self) -> RedisServer:
        """The data node the Sentinels name as primary."""
        port = self.primary_port()
        return next(node for node in self.nodes if node.port == port)

    def stop(self) -> None:
        """Stop everything and remove the directories."""
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in self.nodes:
            node.stop()
