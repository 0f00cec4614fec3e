"""The one section parser (captcha_fleet.contract.sections): every section's errors name the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from captcha_fleet.contract.sections import ConfigError, parse_fields, parse_section


@dataclass(frozen=True)
class Section:
    on: bool = False
    count: int = 1
    seconds: float = 2.0
    name: str = "x"
    weights: dict[str, float] = field(default_factory=lambda: {"a": 1.0})
    anything: tuple[str, ...] = ()


def test_values_are_checked_by_the_type_of_their_default() -> None:
    parsed = parse_section(
        Section, {"on": True, "count": 3, "seconds": 4, "name": "y", "weights": {"b": 2}, "anything": [1]}, "s"
    )
    assert parsed == Section(True, 3, 4.0, "y", {"a": 1.0, "b": 2.0}, [1])  # type: ignore[arg-type]
    assert isinstance(parsed.seconds, float)
    assert parse_section(Section, None, "s") == Section()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"on": 1}, r"s\.on: expected true or false"),
        ({"count": True}, r"s\.count: expected an integer"),
        ({"count": -1}, r"s\.count: must not be negative"),
        ({"seconds": "2"}, r"s\.seconds: expected a number"),
        ({"name": 3}, r"s\.name: expected a string"),
        ({"weights": {"b": -1}}, r"s\.weights\.b: expected a non-negative number"),
        ({"colour": 1}, r"s\.colour: unknown setting \(known: anything, count, name, on, seconds, weights\)"),
    ],
)
def test_errors_name_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_section(Section, data, "s")


def test_a_section_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"s: expected a mapping, got list"):
        parse_section(Section, [1], "s")


def test_own_parsers_and_a_base_to_merge_into() -> None:
    def doubled(value: Any, current: Any, where: str) -> int:
        if not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer")
        return int(current) + value

    base = Section(count=10)
    assert parse_section(Section, {"count": 5}, "s", {"count": doubled}, base) == Section(count=15)
    assert parse_fields(Section, {"count": 5}, "s", {"count": doubled}) == {"count": 6}  # current = the default
    with pytest.raises(ConfigError, match=r"s\.count: expected an integer"):
        parse_fields(Section, {"count": "5"}, "s", {"count": doubled})


def test_config_error_is_the_one_of_captcha_fleet_config() -> None:
    from captcha_fleet.contract import config

    assert config.ConfigError is ConfigError
