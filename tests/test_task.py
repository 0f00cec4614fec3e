"""Task payload parsing: every malformed payload is classified, never raises."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from captcha_fleet.contract.api_client import JsonScalar
from captcha_fleet.contract.tasks import RESERVED_PARAMS, Malformed, NewTask, Task, parse_task

LIMIT = 10_000


def test_seed_wire_format_parses() -> None:
    raw = json.dumps({"id": "t1", "method": "userrecaptcha", "params": {"googlekey": "k", "pageurl": "u"}})
    task = parse_task(raw.encode(), LIMIT)
    assert task == Task("t1", "userrecaptcha", {"googlekey": "k", "pageurl": "u"}, None, {})


wire_params = st.dictionaries(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(lambda k: k not in RESERVED_PARAMS),
    st.text(max_size=20)
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans(),
    max_size=5,
)


@given(
    method=st.sampled_from(["userrecaptcha", "base64", "some.other-method"]),
    params=wire_params,
    task_id=st.text(min_size=1, max_size=40),
    enqueued_at=st.none() | st.floats(0, 2e9),
)
def test_a_new_task_is_parsed_back_as_it_was_written(
    method: str, params: dict[str, JsonScalar], task_id: str, enqueued_at: float | None
) -> None:
    """The producer's encoder and the worker's parser are inverses on the wire format."""
    payload = NewTask(method, params, task_id).to_json(enqueued_at)
    assert json.loads(payload).keys() >= {"id", "method", "params"}
    assert parse_task(payload.encode(), LIMIT) == Task(task_id, method, params, enqueued_at, {})


def test_a_new_task_without_an_id_gets_a_fresh_one() -> None:
    first, second = NewTask("base64", {"body": "aGk="}).with_id(), NewTask("base64", {"body": "aGk="}).with_id()
    assert first.id and second.id and first.id != second.id
    assert first.with_id() is first


def test_enqueued_at_and_extra_keys_are_kept() -> None:
    raw = json.dumps({"id": "t", "method": "base64", "params": {"body": "aGk="}, "enqueued_at": 5, "tag": "x"})
    task = parse_task(raw.encode(), LIMIT)
    assert isinstance(task, Task)
    assert task.enqueued_at == 5.0
    assert task.extra == {"tag": "x"}


def test_malformed_cases_name_the_problem() -> None:
    cases: dict[bytes, tuple[str, str | None]] = {
        b"not json": ("not JSON", None),
        b"[1, 2]": ("JSON list", None),
        b'{"method": "x"}': ("'id'", None),
        b'{"id": 5, "method": "x"}': ("'id'", None),
        b'{"id": "a"}': ("'method'", "a"),
        b'{"id": "a", "method": "x", "params": []}': ("'params'", "a"),
        b'{"id": "a", "method": "x", "params": {"p": {"nested": 1}}}': ("params.p", "a"),
        b'{"id": "a", "method": "x", "params": {"key": "steal"}}': ("params.key", "a"),
        b"\xff\xfe": ("not JSON", None),
    }
    for raw, (fragment, task_id) in cases.items():
        parsed = parse_task(raw, LIMIT)
        assert isinstance(parsed, Malformed), raw
        assert fragment in parsed.reason, (raw, parsed.reason)
        assert parsed.task_id == task_id


def test_a_missing_required_param_is_named_not_malformed() -> None:
    parsed = parse_task(b'{"id": "a", "method": "post", "params": {}}', LIMIT)
    assert isinstance(parsed, Task)  # well-formed: the provider's kind of error, answered with its code
    missing = parsed.missing_param()
    assert missing is not None
    assert (missing.name, missing.missing_error) == ("file", "ERROR_ZERO_CAPTCHA_FILESIZE")
    unknown = parse_task(b'{"id": "b", "method": "not-in-the-table", "params": {}}', LIMIT)
    assert isinstance(unknown, Task)
    assert unknown.missing_param() is None  # the provider judges a method the table does not know


def test_oversized_payload_with_an_id_gets_an_error_result() -> None:
    raw = json.dumps({"id": "big", "method": "base64", "params": {"body": "A" * 20_000}}).encode()
    parsed = parse_task(raw, LIMIT)
    assert isinstance(parsed, Malformed)
    assert parsed.task_id == "big"
    assert "exceeds" in parsed.reason


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(parse_task(raw, LIMIT), Task | Malformed)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(["id", "method", "params", "enqueued_at", "x"]), json_values))
def test_arbitrary_json_objects_never_raise(payload: dict[str, object]) -> None:
    parsed = parse_task(json.dumps(payload).encode(), LIMIT)
    if isinstance(parsed, Task):
        assert parsed.id and parsed.method
        assert all(isinstance(v, str | int | float | bool) for v in parsed.params.values())


SURROGATE = "\ud800"


def test_payloads_that_cannot_be_stored_sent_or_answered_are_refused_with_their_id() -> None:
    base = {"id": "t", "method": "userrecaptcha", "params": {"googlekey": "g"}}
    cases: list[bytes] = [
        json.dumps({**base, "method": f"m{SURROGATE}"}).encode(),
        json.dumps({**base, "params": {"googlekey": f"g{SURROGATE}"}}).encode(),
        json.dumps({**base, "params": {f"k{SURROGATE}": "v"}}).encode(),
        json.dumps({**base, "tag": [f"x{SURROGATE}"]}).encode(),
        json.dumps({**base, "tag": json.loads("[" * 30 + "]" * 30)}).encode(),
        b'{"id": "t", "method": "userrecaptcha", "params": {"n": ' + b"9" * 5000 + b"}}",
        b'{"id": "t", "method": "userrecaptcha", "params": {"n": NaN}}',
        json.dumps({**base, "method": "user|recaptcha"}).encode(),
        json.dumps({**base, "params": {"Key": "x"}}).encode(),
        json.dumps({**base, "params": {" key": "x"}}).encode(),
        json.dumps({**base, "params": {"key[]": "x"}}).encode(),
    ]
    for raw in cases:
        parsed = parse_task(raw, LIMIT * 100)
        assert isinstance(parsed, Malformed) and parsed.task_id == "t", (raw[:80], parsed)


def test_payloads_without_a_usable_id_never_raise() -> None:
    for raw in (
        json.dumps({"id": f"t{SURROGATE}", "method": "m"}).encode(),
        b'{"id": "t\\ud800", "x": ' + b"[" * 100_000 + b"}",
        b"[" * 100_000,
        b'{"id": ' + b"7" * 5000 + b"}",
        b'{"method": "m", "id": "t", "x": [' + b"\xff}",
    ):
        parsed = parse_task(raw, LIMIT)
        assert isinstance(parsed, Malformed) and parsed.task_id is None, raw[:60]


def test_an_unparseable_payload_that_opens_with_its_id_is_dead_lettered_and_answered() -> None:
    for raw in (
        b'{"id": "t", "x": ' + b"[" * 100_000 + b"}",
        b'{ "id" : "t", "method": "m", "params": {"x": 1,}}',
        b'{"id": "t", "method": "m", "params": {"x": "\xff"}}',
    ):
        parsed = parse_task(raw, LIMIT * 10_000)
        assert isinstance(parsed, Malformed), raw[:60]
        assert (parsed.task_id, parsed.deadletter) == ("t", True), (raw[:60], parsed)
