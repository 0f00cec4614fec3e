"""How the fleet's Redis clients ride out a failover: which errors to retry, for how long, and where to reconnect.

redis-py alone is slow here in three ways, each fixed below:

- a dropped connection reconnects from ``send_packed_command`` to the address it had cached, retried with the
  client's whole back-off, so a Sentinel client kept dialling the dead primary for 10-20 s after the switch;
  :class:`SentinelPrimaryConnection` asks the Sentinels on every reconnect and leaves the waiting to the one
  command-level retry (no retry nested in a retry);
- a connection blocked in ``BLMOVE`` on a primary that froze (SIGSTOP, a cut cable) notices nothing until its
  socket timeout; :class:`SwitchFollower` listens for Sentinel's ``+switch-master`` and shuts those sockets down;
- a wrong password or an untrusted certificate was retried like a lost connection (16 s before the error was
  said); :func:`worth_retrying` fails them at once, and ``READONLY``/``NOREPLICAS`` from a demoted or cut-off
  primary send the client back to the Sentinels like a lost connection.
"""

from __future__ import annotations

import copy
import errno
import logging
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis
from redis.backoff import AbstractBackoff
from redis.connection import Connection, ConnectionPool, SSLConnection
from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection

log = logging.getLogger(__name__)
T = TypeVar("T")
# A primary cut off from its replicas (min-replicas-to-write) refuses writes with this; the Sentinels are about to
# promote another node, so ask them again rather than fail the command.
NOREPLICAS = "NOREPLICAS"
SWITCH_CHANNEL = "+switch-master"


def tls_problem(error: BaseException) -> str | None:
    """What is wrong with the TLS setup behind ``error`` (untrusted certificate, missing file), or None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"the server's certificate does not verify ({current.verify_message or current.reason})"
        if isinstance(current, FileNotFoundError) or (isinstance(current, OSError) and current.errno == errno.ENOENT):
            return f"a TLS file is missing ({current.filename or current})"
        current = current.__cause__ or current.__context__
    text = str(error)
    if isinstance(error, MasterNotFoundError) and not _every_sentinel_refused_us(text):
        return None  # some Sentinel is only unreachable: waiting may fix that
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return "the server's certificate does not verify (certificate verify failed)"
    return None


def worth_retrying(error: BaseException) -> bool:
    """Whether waiting can fix ``error``: a lost connection can, a wrong password or an untrusted CA cannot."""
    if isinstance(error, AuthenticationError | AuthorizationError):
        return False
    if isinstance(error, MasterNotFoundError) and _every_sentinel_refused_us(str(error)):
        return False
    return tls_problem(error) is None


def _every_sentinel_refused_us(text: str) -> bool:
    """redis-py lists each Sentinel's error after " - ": every one of them an auth or a TLS failure."""
    answers = text.split(" - ")[1:]
    marks = ("AuthenticationError", "NOAUTH", "WRONGPASS", "CERTIFICATE_VERIFY_FAILED")
    return bool(answers) and all(any(mark in answer for mark in marks) for answer in answers)


class FailureCount:
    """How many commands of one client failed and were retried or raised, across its connections and threads.

    A retried command may have run with its reply lost (a claim moved tasks nobody holds): a caller that
    compares the count before and after a call knows when to look for such leftovers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0
        self.last_at: float | None = None  # time.monotonic() of the latest failure

    def add(self) -> None:
        with self._lock:
            self.value += 1
            self.last_at = time.monotonic()


def failures_seen(client: redis.Redis) -> int:
    """The :class:`FailureCount` of a client built by ``redis_connect`` (0 for any other client)."""
    retry = client.connection_pool.connection_kwargs.get("retry")
    return retry.failures.value if isinstance(retry, FailoverRetry) else 0


def seconds_since_failure(client: redis.Redis) -> float | None:
    """Seconds since a command of this client last failed (None: never, or not a ``redis_connect`` client)."""
    retry = client.connection_pool.connection_kwargs.get("retry")
    if not isinstance(retry, FailoverRetry) or retry.failures.last_at is None:
        return None
    return time.monotonic() - retry.failures.last_at


class FailoverRetry(Retry):
    """redis-py's Retry bounded in time as well as in count, that never retries what waiting cannot fix.

    ``budget_s`` is how long one command may wait for Redis to come back (a failover, a short network cut);
    past it the caller gets the error and decides (the worker logs it and claims on).
    """

    def __init__(self, backoff: AbstractBackoff, retries: int, budget_s: float) -> None:
        super().__init__(
            backoff,
            retries,
            supported_errors=(redis.ConnectionError, redis.TimeoutError, socket.timeout),
            is_retryable=worth_retrying,
        )
        self.budget_s = budget_s
        self.failures = FailureCount()

    def __deepcopy__(self, memo: dict[int, Any]) -> FailoverRetry:
        """redis-py gives each connection a deep copy: the copies share one :class:`FailureCount`."""
        clone = copy.copy(self)
        clone._backoff = copy.deepcopy(self._backoff, memo)
        return clone

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        """Call ``do`` until it succeeds, the error is final, or the count or the time budget is spent."""
        self._backoff.reset()  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + self.budget_s
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:
                failures += 1
                self.failures.add()
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                final = not worth_retrying(error) or (is_retryable is not None and not is_retryable(error))
                pause = self._backoff.compute(failures)
                if final or failures > self._retries >= 0 or time.monotonic() + pause > deadline:
                    raise
                if pause > 0:
                    time.sleep(pause)


class _SingleConnect:
    """A reconnect inside a command connects once: the command's :class:`FailoverRetry` does the waiting.

    (``connect()``, called when a connection leaves the pool, keeps its own retry: no command retry is around it.)
    """

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        super().connect_check_health(check_health=check_health, retry_socket_connect=False)  # type: ignore[misc]


class PlainConnection(_SingleConnect, Connection):
    """A TCP connection to one Redis server."""


class PlainSSLConnection(_SingleConnect, SSLConnection):
    """A TLS connection to one Redis server."""


class _RespondsToDemotion:
    """Turn ``NOREPLICAS`` from the primary into a lost connection, so the retry asks the Sentinels again."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ResponseError as exc:
            if str(exc).startswith(NOREPLICAS) or f" {NOREPLICAS} " in str(exc):
                self.disconnect()  # type: ignore[attr-defined]
                raise redis.ConnectionError("the primary cannot reach its replicas (NOREPLICAS)") from exc
            raise


class SentinelPrimaryConnection(_RespondsToDemotion, SentinelManagedConnection):
    """A connection to the primary the Sentinels name now, asked again on every (re)connect."""

    def connect(self) -> None:
        self.retry.call_with_retry(lambda: self.connect_check_health(check_health=True), self.disconnect)

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        # Not the address of the last connect: that primary may be dead or demoted.
        self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(
            check_health=check_health and self.connection_pool.check_connection, retry_socket_connect=False
        )


class SentinelPrimarySSLConnection(SentinelPrimaryConnection, SSLConnection):
    """The same over TLS."""


class SwitchFollower(threading.Thread):
    """Listens for ``+switch-master`` and cuts every connection to the old primary at once.

    A connection blocked in ``BLMOVE`` on a primary that froze sees no error until its socket timeout; shutting
    its socket down wakes it with a lost connection, which the command's retry answers by asking the Sentinels.
    The socket is only shut down, not closed: the thread that owns the connection cleans it up itself.
    """

    def __init__(self, sentinel: Sentinel, master: str, pool: ConnectionPool, poll_s: float = 1.0) -> None:
        super().__init__(name=f"sentinel-follow-{master}", daemon=True)
        self.sentinels: list[redis.Redis] = list(sentinel.sentinels)
        self.master = master
        self.pool_ref = weakref.ref(pool)
        self.poll_s = poll_s
        self.switches = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        index = 0
        while not self.stopped.is_set() and self.pool_ref() is not None:
            sentinel = self.sentinels[index % len(self.sentinels)]
            index += 1
            try:
                self._listen(sentinel)
            except (redis.RedisError, OSError, ValueError):
                self.stopped.wait(0.5)  # this Sentinel is gone or refused us: the next one

    def _listen(self, sentinel: redis.Redis) -> None:
        pubsub = sentinel.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(SWITCH_CHANNEL)
            while not self.stopped.is_set() and self.pool_ref() is not None:
                message = pubsub.get_message(timeout=self.poll_s)
                if message is not None:
                    self._on_switch(message.get("data"))
        finally:
            pubsub.close()

    def _on_switch(self, data: object) -> None:
        text = data.decode() if isinstance(data, bytes) else str(data)
        # "<master name> <old ip> <old port> <new ip> <new port>"
        parts = text.split()
        if len(parts) != 5 or parts[0] != self.master:
            return
        pool = self.pool_ref()
        if pool is None:
            return
        self.switches += 1
        cut = cut_connections(pool, (parts[1], int(parts[2])))
        log.warning("Sentinel moved %s from %s:%s to %s:%s; cut %d connection(s)", self.master, *parts[1:], cut)

    def stop(self) -> None:
        """End the thread within ``poll_s``."""
        self.stopped.set()


def cut_connections(pool: ConnectionPool, address: tuple[str, int]) -> int:
    """Shut down the sockets of ``pool``'s connections to ``address``, idle or in use; how many were cut."""
    with pool._lock:
        connections: Iterable[Any] = [*pool._available_connections, *pool._in_use_connections]
    cut = 0
    for connection in connections:
        sock = getattr(connection, "_sock", None)
        if sock is None or (str(connection.host), int(connection.port)) != address:
            continue
        try:
            sock.shutdown(socket.SHUT_RDWR)
            cut += 1
        except OSError:
            pass
    return cut
