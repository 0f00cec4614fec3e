"""The preflight checks behind ``captcha-fleet doctor``: each returns results and never raises.

Every message says what was tried and what to do, and none carries a secret: the API key and the Redis
password are scrubbed from anything a library hands back, since a new operator pastes doctor's output into
tickets and chats.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from captcha_fleet.contract.config import FleetConfig
from captcha_fleet.contract.inventory import InventoryHost
from captcha_fleet.contract.log_redaction import redact_url

if TYPE_CHECKING:  # the probe needs paramiko, which only the controller extra installs
    from captcha_fleet.apps.doctor.ssh_probe import HostReport


class Status(enum.StrEnum):
    """Outcome of one check; only ``fail`` makes doctor exit non-zero."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class CheckResult:
    """One line of doctor's report."""

    name: str
    status: Status
    detail: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "status": self.status.value, "detail": self.detail, "data": dict(self.data)}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret (of a useful length) in ``text`` by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def redis_secrets(url: str) -> list[str]:
    """The password (and user) embedded in a Redis URL."""
    parts = urlsplit(url)
    return [s for s in (parts.password, parts.username) if s]


def redis_location(url: str) -> str:
    """``host:port/db`` of a Redis URL, without credentials."""
    from captcha_fleet.contract.redis_connect import is_sentinel_url, parse_sentinel_url

    if is_sentinel_url(url):
        address = parse_sentinel_url(url)
        sentinels = ",".join(f"{host}:{port}" for host, port in address.sentinels)
        return f"{address.master}@{sentinels}/{address.db}"
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    db = parts.path.lstrip("/") or "0"
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}/{db}"


def check_redis(config: FleetConfig, timeout_s: float) -> CheckResult:
    """PING, then SET/GET/DEL a throwaway key under the prefix: reachable is not enough, workers must write."""
    try:
        return _check_redis(config, timeout_s)
    except Exception as exc:  # a check never raises, nor quotes the URL (it may hold the password)
        return CheckResult("redis", Status.FAIL, f"cannot use REDIS_URL: {type(exc).__name__} (is it well formed?)")


def _check_redis(config: FleetConfig, timeout_s: float) -> CheckResult:
    import redis

    where = redis_location(config.redis_url)
    secrets = redis_secrets(config.redis_url)
    key = f"{config.key_prefix}:doctor:{uuid.uuid4().hex}"
    token = uuid.uuid4().hex
    from captcha_fleet.contract.redis_connect import connect

    client = connect(config, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retries=0)
    try:
        client.ping()
        client.set(key, token, ex=60)
        read_back = client.get(key)
        client.delete(key)
        version = str(client.info("server").get("redis_version", "?"))
    except redis.RedisError as exc:
        return _redis_failure(exc, where, key, secrets, timeout_s)
    finally:
        client.close()
    if read_back != token.encode():
        return CheckResult("redis", Status.FAIL, f"{where}: wrote {key} but read back something else")
    return CheckResult(
        "redis", Status.OK, f"{where}: read/write ok (redis {version})", {"address": where, "version": version}
    )


def _redis_failure(exc: Exception, where: str, key: str, secrets: Iterable[str], timeout_s: float) -> CheckResult:
    """What a Redis error during the check says about the setup (the password scrubbed from the details)."""
    import redis

    if isinstance(exc, redis.AuthenticationError):
        return CheckResult("redis", Status.FAIL, f"{where}: authentication failed (check the password in REDIS_URL)")
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return CheckResult("redis", Status.FAIL, f"{where}: read-only (a replica?): workers could not claim tasks")
    if isinstance(exc, redis.exceptions.NoPermissionError):
        detail = scrub(str(exc), secrets)
        return CheckResult("redis", Status.FAIL, f"{where}: the ACL user may not write {key}: {detail}")
    if isinstance(exc, redis.TimeoutError):
        return CheckResult("redis", Status.FAIL, f"{where}: no answer within {timeout_s:g} s")
    if isinstance(exc, redis.ConnectionError):
        detail = scrub(str(exc), secrets)
        return CheckResult("redis", Status.FAIL, f"{where}: cannot connect: {detail} (is REDIS_URL right?)")
    detail = scrub(str(exc), secrets)
    return CheckResult("redis", Status.FAIL, f"{where}: {type(exc).__name__}: {detail}")


def check_api(config: FleetConfig, timeout_s: float, balance_floor: float | None = None) -> CheckResult:
    """Read the balance: it proves the base URL answers and the key is accepted, without spending anything."""
    try:
        return _check_api(config, timeout_s, balance_floor)
    except Exception as exc:  # a check never raises
        return CheckResult("api", Status.FAIL, f"cannot use api.base: {type(exc).__name__} (is it well formed?)")


def _check_api(config: FleetConfig, timeout_s: float, balance_floor: float | None) -> CheckResult:
    from captcha_fleet.contract.api_client import CaptchaApi
    from captcha_fleet.contract.api_errors import ApiError, ErrorClass

    base = redact_url(config.api.base)  # for messages: a proxy's credentials stay out of them
    key = config.api.key
    if not key:
        return CheckResult(
            "api", Status.FAIL, "no API key: set CAPTCHAAI_KEY in the environment or api.key_file in fleet.yml"
        )
    api = CaptchaApi(
        config.api.base,
        key,
        connect_timeout_s=min(config.api.connect_timeout_s, timeout_s),
        read_timeout_s=min(config.api.read_timeout_s, timeout_s),
        pool_size=1,
    )
    try:
        balance = api.balance()
    except ApiError as exc:
        code = scrub(exc.code, [key])
        if exc.error_class is ErrorClass.FATAL:
            return CheckResult("api", Status.FAIL, f"{base}: the API key was rejected ({code}); check CAPTCHAAI_KEY")
        return CheckResult("api", Status.FAIL, f"{base}: balance not read ({code}): is api.base reachable from here?")
    finally:
        api.close()
    data = {"base": base, "balance": balance}
    if balance_floor is not None and balance < balance_floor:
        detail = f"{base}: key accepted, balance {balance:.2f} is below controller.balance_floor {balance_floor:g}"
        return CheckResult("api", Status.WARN, detail + ": the controller will not scale up", data)
    return CheckResult("api", Status.OK, f"{base}: key accepted, balance {balance:.2f}", data)


def host_result(report: HostReport, min_python: tuple[int, int], min_free_kb: int) -> CheckResult:
    """One inventory host: reached, Python new enough, enough free disk on ``/``."""
    name = f"ssh {report.host.name}"
    if report.error is not None:
        return CheckResult(name, Status.FAIL, report.error, {"target": report.target, "checked": ["ssh"]})
    problems: list[str] = []
    parts: list[str] = []
    checked = ["ssh", f"{report.host.python} --version", "df -Pk /"]
    data: dict[str, Any] = {"target": report.target, "checked": checked}
    if report.python_version is None:
        problems.append(report.python_error or "python version unknown")
    else:
        version = ".".join(map(str, report.python_version))
        data["python"] = version
        parts.append(f"Python {version}")
        if report.python_version[:2] < min_python:
            wanted = ".".join(map(str, min_python))
            problems.append(f"Python {version} is older than {wanted}, which the worker needs")
    if report.free_kb is None:
        problems.append(report.disk_error or "free disk unknown")
    else:
        data["free_kb"] = report.free_kb
        parts.append(f"{report.free_kb / 1024 / 1024:.1f} GiB free on /")
        if report.free_kb < min_free_kb:
            problems.append(f"only {report.free_kb // 1024} MiB free on / (want {min_free_kb // 1024} MiB)")
    if problems:
        return CheckResult(name, Status.FAIL, f"{report.target}: " + "; ".join(problems), data)
    return CheckResult(name, Status.OK, f"{report.target}: " + ", ".join(parts), data)


def local_host_result(host: InventoryHost) -> CheckResult:
    """Hosts with ``ansible_connection: local`` (or docker, ...) are not reached over SSH."""
    return CheckResult(
        f"ssh {host.name}",
        Status.SKIP,
        f"ansible_connection={host.connection}: not an SSH host",
        {"target": host.address, "checked": []},
    )
