"""The one parser that turns a section of ``fleet.yml`` (or an admin update) into its dataclass.

Every section (``api``, ``worker``, ``results``, ``redis``, ``controller``, ``sandbox``, ``ansible_actuator``) goes
through :func:`parse_fields`: a mapping is required, unknown names are refused with the known ones listed, and each
value is checked against its field, so every error starts with the field's full name (``controller.interval_s: ...``).
A field is parsed by the section's own parser for it if it has one, else by the type of its default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

_T = TypeVar("_T")

# (value, current value, "section.field") -> the parsed value. "current" is the default, or the base's value.
FieldParser = Callable[[Any, Any, str], Any]


class ConfigError(ValueError):
    """A configuration problem, with the offending field named."""


def section_mapping(data: Any, where: str) -> Mapping[str, Any]:
    """``data`` as a mapping (None is an empty section); anything else is refused by name."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    return data


def parse_fields(
    cls: type[Any],
    data: Any,
    where: str,
    parsers: Mapping[str, FieldParser] | None = None,
    base: Any = None,
) -> dict[str, Any]:
    """The parsed values of the fields named in ``data`` (for ``cls(**...)`` or ``dataclasses.replace``)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    parsers = parsers or {}
    parsed: dict[str, Any] = {}
    for name, value in section_mapping(data, where).items():
        if name not in fields:
            raise ConfigError(f"{where}.{name}: unknown setting (known: {', '.join(sorted(fields))})")
        current = getattr(base, name) if base is not None else field_default(fields[name])
        parse = parsers.get(name, coerce)
        parsed[name] = parse(value, current, f"{where}.{name}")
    return parsed


def parse_section(
    cls: type[_T],
    data: Any,
    where: str,
    parsers: Mapping[str, FieldParser] | None = None,
    base: _T | None = None,
) -> _T:
    """Build dataclass ``cls`` from a mapping (fields not named keep their default, or ``base``'s value)."""
    values = parse_fields(cls, data, where, parsers, base)
    if base is not None:
        return dataclasses.replace(base, **values)  # type: ignore[type-var]
    return cls(**values)


def field_default(f: dataclasses.Field[Any]) -> Any:
    """A field's default value (None for a field without one: its value is then taken as it is)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


# --- parsing by the type of the default ----------------------------------------------------------------
def coerce(value: Any, default: Any, where: str) -> Any:
    """Check ``value`` against the type of ``default`` (bool, int, float, str, a mapping of numbers)."""
    for kind, parse in _BY_DEFAULT_TYPE:
        if isinstance(default, kind):
            return parse(value, default, where)
    return value


def parse_bool(value: Any, _current: Any, where: str) -> bool:
    """``true`` or ``false``, nothing that merely looks like one."""
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def parse_count(value: Any, _current: Any, where: str) -> int:
    """A non-negative integer (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if value < 0:
        raise ConfigError(f"{where}: must not be negative, got {value}")
    return value


def parse_amount(value: Any, _current: Any, where: str) -> float:
    """A non-negative number, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if value < 0:
        raise ConfigError(f"{where}: must not be negative, got {value}")
    return float(value)


def parse_str(value: Any, _current: Any, where: str) -> str:
    """A string."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def parse_amounts(value: Any, current: Mapping[str, float], where: str) -> dict[str, float]:
    """A mapping of names to non-negative numbers, merged into ``current``."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    merged = dict(current)
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise ConfigError(f"{where}.{k}: expected a non-negative number, got {v!r}")
        merged[str(k)] = float(v)
    return merged


# bool before int: a bool is an int to isinstance.
_BY_DEFAULT_TYPE: tuple[tuple[type | tuple[type, ...], FieldParser], ...] = (
    (bool, parse_bool),
    (int, parse_count),
    (float, parse_amount),
    (str, parse_str),
    (Mapping, parse_amounts),
)
