"""Classification of API answers: the three error classes, and junk bodies that are never task errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from captcha_fleet.contract.api_client import parse_answer
from captcha_fleet.contract.api_errors import ApiError, ErrorClass, classify


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("ERROR_WRONG_USER_KEY", ErrorClass.FATAL),
        ("ERROR_KEY_DOES_NOT_EXIST", ErrorClass.FATAL),
        ("IP_BANNED", ErrorClass.FATAL),
        ("ERROR_NO_SLOT_AVAILABLE", ErrorClass.CAPACITY),
        ("ERROR_ZERO_BALANCE", ErrorClass.CAPACITY),
        ("MAX_USER_TURN", ErrorClass.CAPACITY),
        ("ERROR: 1001", ErrorClass.CAPACITY),
        ("ERROR: 1005", ErrorClass.CAPACITY),
        ("ERROR_CAPTCHA_UNSOLVABLE", ErrorClass.TASK),
        ("ERROR_BAD_PARAMETERS", ErrorClass.TASK),
        ("ERROR_ZERO_CAPTCHA_FILESIZE", ErrorClass.TASK),
    ],
)
def test_error_classes(code: str, expected: ErrorClass) -> None:
    assert classify(code) is expected


def test_json_and_text_answers() -> None:
    assert parse_answer('{"status":1,"request":"123"}') == (1, "123")
    assert parse_answer('{"status":0,"request":"CAPCHA_NOT_READY"}') == (0, "CAPCHA_NOT_READY")
    assert parse_answer("OK|42") == (1, "42")
    assert parse_answer("ERROR_WRONG_USER_KEY") == (0, "ERROR_WRONG_USER_KEY")


@pytest.mark.parametrize(
    "body",
    [
        "<html><body>502 Bad Gateway</body></html>",
        "",
        "{not json",
        '{"status": "1"}',
        "[1]",
        '{"status":true}',
    ],
)
def test_junk_bodies_are_capacity_errors(body: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_answer(body)
    assert info.value.error_class is ErrorClass.CAPACITY


@given(st.text(max_size=200))
def test_any_body_parses_or_raises_a_classified_error(body: str) -> None:
    try:
        status, request = parse_answer(body)
    except ApiError as exc:
        assert exc.error_class in ErrorClass
    else:
        assert status in (0, 1)
        assert isinstance(request, str)
