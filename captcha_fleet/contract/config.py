"""``fleet.yml`` plus environment variables, loaded into typed, validated settings.

Secrets and endpoints come from the environment (``REDIS_URL``, ``CAPTCHAAI_KEY``, ``CAPTCHAAI_BASE``) so the
YAML file can be committed; command-line flags override both. Each component parses its own section; the
sections it does not know stay available in :attr:`FleetConfig.raw`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from captcha_fleet.contract.keys import DEFAULT_PREFIX, Keys
from captcha_fleet.contract.log_redaction import redact
from captcha_fleet.contract.methods import DEFAULT_FIRST_POLL_DELAY_S, first_poll_delays
from captcha_fleet.contract.sections import ConfigError, parse_section

__all__ = [
    "ConfigError",
    "FleetConfig",
    "load_config",
    "write_fleet_config",
]  # ConfigError lives in sections; callers import it here

DEFAULT_API_BASE = "https://ocr.captchaai.com"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class ApiConfig:
    """How to talk to the CaptchaAI-compatible API, and the polling discipline."""

    base: str = DEFAULT_API_BASE
    key: str = dataclasses.field(default="", repr=False)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    # in.php may not be retried once sent (it could pay twice), so its answer is awaited longer.
    submit_read_timeout_s: float = 90.0
    # Seconds from submit to the first res.php poll, per method (the method table's: tokens ~15 s, images ~5 s).
    first_poll_delay_s: Mapping[str, float] = field(default_factory=first_poll_delays)
    poll_interval_s: float = 5.0  # the provider's advice for a lone CAPTCHA
    # Polls come faster once a process holds this many solves (one res.php?ids= covers all; 0 = never) ...
    fast_poll_from: int = 17
    # ... down to this share of poll_interval_s (the first-poll delay shrinks half as much): see poll_pace.py.
    fast_poll_min_share: float = 0.3
    # CaptchaAI blocks accounts that poll one CAPTCHA more than about 20 times (ERROR: 1005).
    max_polls_per_captcha: int = 20
    # HTTP requests per solved task (submits, refused submits, polls) that plan-full retries are steered to
    # (worker/retry_budget.py); 0 keeps the retry ratio fixed.
    requests_per_task: float = 1.25
    batch_size: int = 100
    task_deadline_s: float = 180.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    fatal_recheck_s: float = 60.0
    pool_connections: int = 32

    def first_poll_delay(self, method: str) -> float:
        """The first-poll delay for ``method``, falling back to ``default``."""
        delays = self.first_poll_delay_s
        return float(delays.get(method, delays.get("default", DEFAULT_FIRST_POLL_DELAY_S)))

    def redacted(self) -> dict[str, Any]:
        """Settings safe to log: the key is never included."""
        out = dataclasses.asdict(self)
        out["key"] = "***" if self.key else ""
        return out


@dataclass(frozen=True)
class WorkerConfig:
    """One worker service: its slot bounds, heartbeat, drain and payload rules."""

    min_slots: int = 0
    max_slots: int = 2000
    initial_slots: int = 20
    submit_threads: int = 16
    claim_timeout_s: float = 1.0
    heartbeat_interval_s: float = 2.0
    heartbeat_ttl_s: float = 10.0
    reaper_interval_s: float = 5.0
    drain_timeout_s: float = 60.0
    max_attempts: int = 3
    max_payload_bytes: int = 1_000_000
    latency_window: int = 2000
    # Prometheus /metrics: off while the port is 0.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"


@dataclass(frozen=True)
class ResultsConfig:
    """How long results stay readable in the seed-compatible hash."""

    retention_s: float = 86_400.0
    notify_ttl_s: float = 600.0
    events_maxlen: int = 100_000


@dataclass(frozen=True)
class FleetConfig:
    """The whole ``fleet.yml``."""

    redis_url: str = dataclasses.field(default=DEFAULT_REDIS_URL, repr=False)
    key_prefix: str = DEFAULT_PREFIX
    api: ApiConfig = field(default_factory=ApiConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> Keys:
        """The Redis key names under this fleet's prefix."""
        return Keys(self.key_prefix)

    def section(self, name: str) -> Mapping[str, Any]:
        """A section this module does not type (``controller``, ``sandbox``, ...), or ``{}``."""
        value = self.raw.get(name) or {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__}")
        return value

    def to_data(self, with_base: bool = False) -> dict[str, Any]:
        """``fleet.yml`` as plain data, what :func:`load_config` reads back into this config.

        Never the API key nor the Redis URL (secrets: they travel as ``CAPTCHAAI_KEY`` and ``REDIS_URL``); the
        API base only ``with_base`` (else ``CAPTCHAAI_BASE`` brings it). Untyped sections (:attr:`raw`) follow.
        """
        api = _plain(dataclasses.asdict(self.api))
        api.pop("key")
        if not with_base:
            api.pop("base")
        data: dict[str, Any] = {
            "key_prefix": self.key_prefix,
            "api": api,
            "worker": _plain(dataclasses.asdict(self.worker)),
            "results": _plain(dataclasses.asdict(self.results)),
        }
        data.update(_plain(self.raw))
        return data

    def to_yaml(self, with_base: bool = False) -> str:
        """:meth:`to_data` as YAML text, sections in the order above."""
        return yaml.safe_dump(self.to_data(with_base), sort_keys=False, default_flow_style=False)


def write_fleet_config(path: str | os.PathLike[str], config: FleetConfig, with_base: bool = False) -> Path:
    """Write ``config`` as a secret-free ``fleet.yml`` at ``path`` (see :meth:`FleetConfig.to_data`)."""
    out = Path(path)
    out.write_text(config.to_yaml(with_base), encoding="utf-8")
    return out


def _plain(value: Any) -> Any:
    """Mappings as dicts and tuples as lists, all the way down: what ``yaml.safe_dump`` writes."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


_REDIS_URL_HINT = "percent-encode '/', '#', '?', '@' and ':' in the password (%2F, %23, %3F, %40, %3A)"


def check_redis_url(url: str) -> None:
    """Refuse a Redis URL that redis-py would misread, naming the problem but never any part of the URL.

    An unencoded ``/``, ``#`` or ``?`` in the password ends the host part early: redis-py then fails with a
    message quoting the password's tail, or quietly connects to localhost.
    """
    where = "redis_url (REDIS_URL or --redis-url)"
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigError(f"{where}: cannot be parsed; {_REDIS_URL_HINT}") from None
    if parts.scheme in ("redis+sentinel", "rediss+sentinel"):
        # Several host:port pairs: captcha_fleet.contract.redis_connect checks them and the master's name.
        if "@" in parts.path + parts.query + parts.fragment:
            raise ConfigError(f"{where}: the password seems to hold an unencoded character; {_REDIS_URL_HINT}")
        return
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: cannot be parsed; {_REDIS_URL_HINT}") from None
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(f"{where}: a unix:// URL needs the socket's path")
        return
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"{where}: expected a redis://, rediss://, unix:// or redis+sentinel:// URL")
    if "@" in parts.path + parts.query + parts.fragment:
        raise ConfigError(f"{where}: the password seems to hold an unencoded character; {_REDIS_URL_HINT}")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ConfigError(f"{where}: the database after the host must be a number; {_REDIS_URL_HINT}")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"{where}: the port must be between 1 and 65535")


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> FleetConfig:
    """Load ``fleet.yml`` (optional), then the environment, then ``overrides`` (flags), in that order."""
    env = os.environ if env is None else env
    overrides = overrides or {}
    data = _read_yaml(path) if path is not None else {}
    api_data = dict(data.pop("api", None) or {})
    if "key" in api_data:
        raise ConfigError("api.key: keep the API key out of fleet.yml; set CAPTCHAAI_KEY or api.key_file")
    key_file = api_data.pop("key_file", None)
    api_base = overrides.get("api_base") or env.get("CAPTCHAAI_BASE")
    if api_base:
        api_data["base"] = api_base
    redis_url = overrides.get("redis_url") or env.get("REDIS_URL") or str(data.pop("redis_url", DEFAULT_REDIS_URL))
    data.pop("redis_url", None)
    key_prefix = overrides.get("key_prefix") or data.pop("key_prefix", DEFAULT_PREFIX)
    data.pop("key_prefix", None)
    check_redis_url(redis_url)
    _check_key_prefix(key_prefix)
    api = _api_section(api_data, env, key_file)
    worker = _worker_section(data.pop("worker", None))
    results = parse_section(ResultsConfig, data.pop("results", None), "results")
    return FleetConfig(redis_url=redis_url, key_prefix=key_prefix, api=api, worker=worker, results=results, raw=data)


def _read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The top-level mapping of ``fleet.yml`` (an empty file is an empty mapping)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return dict(loaded or {})


def _check_key_prefix(key_prefix: Any) -> None:
    if not isinstance(key_prefix, str) or not key_prefix or any(c in key_prefix for c in " {}"):
        raise ConfigError(f"key_prefix: expected a short name without spaces or braces, got {key_prefix!r}")


def _api_key(env: Mapping[str, str], key_file: Any) -> str:
    """The key from ``api.key_file`` if set, else ``CAPTCHAAI_KEY`` (never from fleet.yml itself)."""
    if not key_file:
        return env.get("CAPTCHAAI_KEY", "")
    try:
        return Path(str(key_file)).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"api.key_file: cannot read {key_file}: {exc.strerror}") from exc


def _api_section(api_data: Mapping[str, Any], env: Mapping[str, str], key_file: Any) -> ApiConfig:
    api = parse_section(ApiConfig, api_data, "api")
    api = dataclasses.replace(api, key=_api_key(env, key_file))
    if not api.base.startswith(("http://", "https://")):
        raise ConfigError(f"api.base: expected an http(s) URL, got {redact(api.base)!r}")
    if api.poll_interval_s <= 0 or api.task_deadline_s <= 0:
        raise ConfigError("api.poll_interval_s and api.task_deadline_s must be positive")
    if not 0 < api.fast_poll_min_share <= 1:
        raise ConfigError("api.fast_poll_min_share: expected a fraction in (0, 1]")
    if api.requests_per_task != 0 and api.requests_per_task <= 1:
        raise ConfigError("api.requests_per_task: expected more than 1 (one submit per task), or 0 for a fixed ratio")
    return api


def _worker_section(worker_data: Any) -> WorkerConfig:
    worker = parse_section(WorkerConfig, worker_data, "worker")
    if worker.min_slots > worker.max_slots:
        raise ConfigError(f"worker.min_slots ({worker.min_slots}) exceeds worker.max_slots ({worker.max_slots})")
    if worker.heartbeat_ttl_s <= worker.heartbeat_interval_s:
        raise ConfigError("worker.heartbeat_ttl_s must be longer than worker.heartbeat_interval_s")
    if worker.submit_threads < 1:
        raise ConfigError("worker.submit_threads must be at least 1")
    if worker.max_attempts < 1:
        raise ConfigError("worker.max_attempts must be at least 1")
    return worker
