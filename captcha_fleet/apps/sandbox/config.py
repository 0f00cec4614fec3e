"""The sandbox's settings: what the fake service costs, how fast it solves and how it misbehaves.

The same parser reads the ``sandbox:`` section of ``fleet.yml`` and the JSON body of ``POST /admin/config``,
so a runtime change is validated exactly like the file. Errors name the field (``sandbox.threads: ...``).
Mappings (``solve_time``, ``faults``, per-method prices and rates) merge into the current values, so an
update can change one method or one fault kind without restating the rest.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from captcha_fleet.contract.config import ConfigError
from captcha_fleet.contract.provider_model import (
    DEFAULT_SOLVE_TIME,
    ProviderModel,
    SolveDistribution,
    SolveMixture,
    SolveTime,
    table_solve_times,
)
from captcha_fleet.contract.provider_profiles import provider_profile
from captcha_fleet.contract.sections import FieldParser, field_default, parse_fields

FAULT_KINDS: tuple[str, ...] = ("http_500", "html_200", "slow", "reset", "error_1001", "no_slot")
ENDPOINTS: tuple[str, ...] = ("in.php", "res.php")

POLL_FAULTS: tuple[str, ...] = ("res.php",)  # where a profile's slow and failed polls happen


@dataclass(frozen=True)
class SandboxConfig:
    """Everything the sandbox can be told; every field has a default that behaves like a healthy account."""

    time_scale: float = 1.0
    # The method table's solve times (tokens ~15 s, images ~5 s); a method without its own uses "default".
    solve_time: Mapping[str, SolveDistribution] = field(default_factory=table_solve_times)
    threads: int | None = None
    balance: float = 100.0
    price_per_solve: float | Mapping[str, float] = 0.002
    unsolvable_rate: float | Mapping[str, float] = 0.0
    # The share of answers that hold a "|" themselves, as a text CAPTCHA's answer can.
    answer_separator_rate: float = 0.0
    accept_keys: tuple[str, ...] | None = None
    reject_keys: tuple[str, ...] = ("bad-key",)
    banned_keys: tuple[str, ...] = ()
    max_polls_per_captcha: int | None = 20
    retention_s: float = 300.0
    seed: int | None = None
    faults: Mapping[str, float] = field(default_factory=dict)
    slow_delay_s: float = 5.0
    fault_endpoints: tuple[str, ...] = ENDPOINTS
    # The provider model's other knobs (captcha_fleet.contract.provider_model), in unscaled seconds like solve_time.
    http_latency_s: float = 0.0
    http_jitter_s: float = 0.0
    load_slowdown: float = 0.0
    load_threads: int | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_profile(cls, name: str, **fields: Any) -> SandboxConfig:
        """The sandbox acting out provider profile ``name`` (``fields`` on top, e.g. ``time_scale``, ``threads``).

        Its slow and failed polls are the sandbox's ``slow`` and ``http_500`` faults on ``res.php``, the stall
        scaled like every other time. Unknown names raise a ConfigError that lists the known ones.
        """
        model = provider_profile(name).model
        scale = float(fields.get("time_scale", 1.0))
        faults = {k: v for k, v in (("http_500", model.failed_poll_rate), ("slow", model.slow_poll_rate)) if v}
        base: dict[str, Any] = {
            "solve_time": dict(model.solve_time),
            "http_latency_s": model.http_latency_s,
            "http_jitter_s": model.http_jitter_s,
            "load_slowdown": model.load_slowdown,
            "load_threads": model.load_threads,
        }
        if faults:
            base.update(faults=faults, fault_endpoints=POLL_FAULTS, slow_delay_s=model.slow_poll_s * scale)
        return cls(**{**base, **fields})

    def provider_model(self) -> ProviderModel:
        """The provider this config acts out, in unscaled seconds (the simulator's view of it)."""
        polls = self.fault_endpoints == POLL_FAULTS
        return ProviderModel(
            solve_time=dict(self.solve_time),
            http_latency_s=self.http_latency_s,
            http_jitter_s=self.http_jitter_s,
            load_slowdown=self.load_slowdown,
            load_threads=self.load_threads,
            slow_poll_rate=self.fault_rate("slow") if polls else 0.0,
            slow_poll_s=self.slow_delay_s / self.time_scale if polls and self.fault_rate("slow") else 0.0,
            failed_poll_rate=self.fault_rate("http_500") if polls else 0.0,
        )

    def solve_time_for(self, method: str) -> SolveDistribution:
        """The solve-time distribution for ``method``, falling back to ``default``."""
        return self.solve_time.get(method) or self.solve_time.get("default") or DEFAULT_SOLVE_TIME

    def price_for(self, method: str) -> float:
        """What one accepted solve of ``method`` costs."""
        return _per_method(self.price_per_solve, method, 0.002)

    def unsolvable_rate_for(self, method: str) -> float:
        """The probability that a solve of ``method`` ends ERROR_CAPTCHA_UNSOLVABLE."""
        return _per_method(self.unsolvable_rate, method, 0.0)

    def fault_rate(self, kind: str) -> float:
        """The per-request probability of fault ``kind`` (0 when not configured)."""
        return float(self.faults.get(kind, 0.0))

    def retention_wall_s(self) -> float:
        """How long a finished answer stays fetchable, in wall-clock seconds."""
        return self.retention_s * self.time_scale

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view, in the shape :func:`parse_sandbox_config` accepts back."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "solve_time":
                value = {m: st.to_dict() for m, st in value.items()}
            elif isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def updated(self, data: Mapping[str, Any], where: str = "sandbox") -> SandboxConfig:
        """A copy with the fields in ``data`` changed (mappings merged), validated like the file."""
        return parse_sandbox_config(data, base=self, where=where)


def _per_method(value: float | Mapping[str, float], method: str, fallback: float) -> float:
    if isinstance(value, Mapping):
        return float(value.get(method, value.get("default", fallback)))
    return float(value)


def parse_sandbox_config(
    data: Mapping[str, Any] | None, base: SandboxConfig | None = None, where: str = "sandbox"
) -> SandboxConfig:
    """Build a config from a mapping (the ``sandbox:`` section of fleet.yml, or an admin update)."""
    base = base or SandboxConfig()
    if data is None:
        return base
    changes = parse_fields(SandboxConfig, data, where, _FIELD_PARSERS, base)
    try:
        return dataclasses.replace(base, **changes)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from None


def _validate(config: SandboxConfig) -> None:
    """Range checks that also guard direct construction; messages start with the field name."""
    _validate_scalars(config)
    for method, st in config.solve_time.items():
        parts = [p for _, p in st.parts] if isinstance(st, SolveMixture) else [st]
        if not all(isinstance(p, SolveTime) and p.median_s >= 0 and p.sigma >= 0 for p in parts):
            raise ConfigError(f"solve_time.{method}: expected non-negative median_s and sigma, got {st!r}")
    _validate_per_method(config)
    _validate_faults(config)


def _validate_scalars(config: SandboxConfig) -> None:
    if not (isinstance(config.time_scale, int | float) and config.time_scale > 0):
        raise ConfigError(f"time_scale: must be a positive number, got {config.time_scale!r}")
    for name in ("balance", "retention_s", "slow_delay_s", "http_latency_s", "http_jitter_s", "load_slowdown"):
        value = getattr(config, name)
        if not isinstance(value, int | float) or value < 0 or math.isnan(value):
            raise ConfigError(f"{name}: must be a non-negative number, got {value!r}")
    if not 0 <= config.answer_separator_rate <= 1:
        raise ConfigError(f"answer_separator_rate: must be a probability, got {config.answer_separator_rate!r}")
    for name in ("threads", "max_polls_per_captcha", "load_threads"):
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"{name}: must be a non-negative integer or null, got {value!r}")


def _validate_per_method(config: SandboxConfig) -> None:
    for name in ("price_per_solve", "unsolvable_rate"):
        value = getattr(config, name)
        items = value.items() if isinstance(value, Mapping) else [("", value)]
        for method, number in items:
            label = f"{name}.{method}" if method else name
            if isinstance(number, bool) or not isinstance(number, int | float) or number < 0:
                raise ConfigError(f"{label}: must be a non-negative number, got {number!r}")
            if name == "unsolvable_rate" and number > 1:
                raise ConfigError(f"{label}: must be a probability between 0 and 1, got {number!r}")


def _validate_faults(config: SandboxConfig) -> None:
    for kind, rate in config.faults.items():
        if kind not in FAULT_KINDS:
            raise ConfigError(f"faults.{kind}: unknown fault (known: {', '.join(FAULT_KINDS)})")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ConfigError(f"faults.{kind}: must be a probability between 0 and 1, got {rate!r}")
    if sum(config.faults.values()) > 1:
        raise ConfigError("faults: the probabilities add up to more than 1")
    for endpoint in config.fault_endpoints:
        if endpoint not in ENDPOINTS:
            raise ConfigError(f"fault_endpoints: unknown endpoint {endpoint!r} (known: {', '.join(ENDPOINTS)})")


def _number(value: Any, at: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{at}: expected a number, got {value!r}")
    return float(value)


def _integer(value: Any, at: str, allow_negative: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{at}: expected an integer or null, got {value!r}")
    if value < 0 and not allow_negative:
        raise ConfigError(f"{at}: must not be negative, got {value}")
    return value


def _strings(value: Any, at: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"{at}: expected a list of strings, got {value!r}")
    for item in value:
        if not isinstance(item, str):
            raise ConfigError(f"{at}: expected a list of strings, got the item {item!r}")
    return tuple(value)


def _number_or_per_method(value: Any, current: float | Mapping[str, float], at: str) -> float | dict[str, float]:
    """A single number, or ``{method: number, default: number}`` merged into the current values."""
    if not isinstance(value, Mapping):
        return _number(value, at)
    merged = dict(current) if isinstance(current, Mapping) else {"default": float(current)}
    for method, number in value.items():
        merged[str(method)] = _number(number, f"{at}.{method}")
    return merged


def _rates(value: Any, current: Mapping[str, float], kinds: tuple[str, ...], at: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{at}: expected a mapping of kind to probability, got {value!r}")
    merged = dict(current)
    for kind, rate in value.items():
        if kind not in kinds:
            raise ConfigError(f"{at}.{kind}: unknown fault (known: {', '.join(kinds)})")
        merged[str(kind)] = _number(rate, f"{at}.{kind}")
    return merged


def _solve_times(value: Any, current: Mapping[str, SolveDistribution], at: str) -> dict[str, SolveDistribution]:
    """``{method: {median_s, sigma}}``, ``{method: median_s}`` or ``{method: {mixture: [...]}}`` merged into the
    current table."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{at}: expected a mapping of method to {{median_s, sigma}}, got {value!r}")
    merged = dict(current)
    for method, entry in value.items():
        here = f"{at}.{method}"
        previous = merged.get(str(method)) or merged.get("default") or DEFAULT_SOLVE_TIME
        if isinstance(entry, SolveTime | SolveMixture):
            merged[str(method)] = entry
        elif isinstance(entry, Mapping) and "mixture" in entry:
            merged[str(method)] = _mixture(entry, here)
        else:
            merged[str(method)] = _lognormal(entry, previous, here)
    return merged


def _lognormal(entry: Any, previous: SolveDistribution, here: str) -> SolveTime:
    """``{median_s, sigma}`` or a bare median; a missing field keeps the previous lognormal's."""
    last = previous if isinstance(previous, SolveTime) else DEFAULT_SOLVE_TIME
    if isinstance(entry, Mapping):
        unknown = set(entry) - {"median_s", "sigma"}
        if unknown:
            raise ConfigError(f"{here}.{sorted(unknown)[0]}: unknown setting (known: median_s, sigma, mixture)")
        median = _number(entry.get("median_s", last.median_s), f"{here}.median_s")
        sigma = _number(entry.get("sigma", last.sigma), f"{here}.sigma")
    else:
        median, sigma = _number(entry, here), last.sigma
    if median < 0 or sigma < 0:
        raise ConfigError(f"{here}: median_s and sigma must not be negative")
    return SolveTime(median, sigma)


def _mixture(entry: Mapping[str, Any], here: str) -> SolveMixture:
    """``{mixture: [{weight, median_s, sigma}, ...]}``: a method whose CAPTCHAs come in several kinds."""
    unknown = set(entry) - {"mixture"}
    if unknown:
        raise ConfigError(f"{here}.{sorted(unknown)[0]}: a mixture takes no other setting")
    items = entry["mixture"]
    if isinstance(items, str) or not isinstance(items, list | tuple) or not items:
        raise ConfigError(f"{here}.mixture: expected a list of {{weight, median_s, sigma}}, got {items!r}")
    parts: list[tuple[float, SolveTime]] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ConfigError(f"{here}.mixture[{i}]: expected {{weight, median_s, sigma}}, got {item!r}")
        weight = _number(item.get("weight", 1.0), f"{here}.mixture[{i}].weight")
        if weight <= 0 or not math.isfinite(weight):
            raise ConfigError(f"{here}.mixture[{i}].weight: must be a positive number, got {weight!r}")
        rest = {k: v for k, v in item.items() if k != "weight"}
        parts.append((weight, _lognormal(rest, DEFAULT_SOLVE_TIME, f"{here}.mixture[{i}]")))
    return SolveMixture(tuple(parts))


# --- one parser per field, for captcha_fleet.contract.sections.parse_fields ----------------------------------------
def _default_of(name: str) -> Any:
    """The field's default: what a null in an update resets a mapping or a list to."""
    return field_default(next(f for f in dataclasses.fields(SandboxConfig) if f.name == name))


def _number_field(value: Any, _current: Any, at: str) -> float:
    return _number(value, at)


def _optional_count(value: Any, _current: Any, at: str) -> int | None:
    return None if value is None else _integer(value, at)


def _optional_seed(value: Any, _current: Any, at: str) -> int | None:
    return None if value is None else _integer(value, at, allow_negative=True)


def _per_method_field(value: Any, current: Any, at: str) -> Any:
    return _default_of(at.rsplit(".", 1)[-1]) if value is None else _number_or_per_method(value, current, at)


def _solve_time_field(value: Any, current: Any, at: str) -> Any:
    return _default_of("solve_time") if value is None else _solve_times(value, current, at)


def _faults_field(value: Any, current: Any, at: str) -> dict[str, float]:
    return {} if value is None else _rates(value, current, FAULT_KINDS, at)


def _optional_strings(value: Any, _current: Any, at: str) -> tuple[str, ...] | None:
    return None if value is None else _strings(value, at)


def _strings_field(value: Any, _current: Any, at: str) -> tuple[str, ...]:
    return () if value is None else _strings(value, at)


_FIELD_PARSERS: dict[str, FieldParser] = {
    **dict.fromkeys(
        (
            "time_scale",
            "balance",
            "retention_s",
            "slow_delay_s",
            "answer_separator_rate",
            "http_latency_s",
            "http_jitter_s",
            "load_slowdown",
        ),
        _number_field,
    ),
    **dict.fromkeys(("threads", "max_polls_per_captcha", "load_threads"), _optional_count),
    "seed": _optional_seed,
    **dict.fromkeys(("price_per_solve", "unsolvable_rate"), _per_method_field),
    "solve_time": _solve_time_field,
    "faults": _faults_field,
    "accept_keys": _optional_strings,
    **dict.fromkeys(("reject_keys", "banned_keys", "fault_endpoints"), _strings_field),
}
