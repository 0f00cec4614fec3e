"""The typed heartbeat, result and event records: one encoding, the wire format unchanged, one way to refuse."""

from __future__ import annotations

import json

import pytest

from captcha_fleet.contract.records import Event, Heartbeat, RecordError, Result, StoredCaptcha

# A heartbeat as the worker wrote it before the records existed (docs/internals.md).
WIRE_HEARTBEAT = {
    "api_errors": {"capacity": 1, "fatal": 0, "task": 0},
    "api_latency": {"count": 2, "p50": 1.5, "p95": 2.0, "p99": 2.0},
    "busy": 3,
    "completed": 7,
    "dead_threads": [],
    "duplicates": 0,
    "failed": {"deadletter": 0, "deadline": 1, "malformed": 0, "task": 0},
    "fatal_error": None,
    "host": "h1",
    "http_requests": {"in": 9, "res": 4},
    "id": "h1:2",
    "instance": "2",
    "latency": {"count": 0, "p50": None, "p95": None, "p99": None},
    "pid": 4242,
    "process": "4242:abcdef012345",
    "slots": 8,
    "started_at": 1700000000.123,
    "state": "running",
    "succeeded": 6,
    "target": 8,
    "ts": 1700000010.5,
    "version": "0.1.0",
}


def test_a_heartbeat_round_trips_to_the_same_json() -> None:
    raw = json.dumps(WIRE_HEARTBEAT, sort_keys=True)
    beat = Heartbeat.from_json(raw)
    assert beat.busy == 3 and beat.latency["p95"] is None and beat.api_errors["capacity"] == 1
    assert beat.to_json() == raw


def test_a_partial_heartbeat_gets_defaults_and_its_names_from_the_worker_id() -> None:
    beat = Heartbeat.from_json(b'{"busy": 1}').with_worker_id("h9:7")
    assert (beat.id, beat.host, beat.instance, beat.state, beat.ts, beat.slots) == (
        "h9:7",
        "h9",
        "7",
        "running",
        None,
        0,
    )
    assert Heartbeat.from_json(b'{"host": "a", "future_field": 1}').host == "a"  # a newer writer's key is ignored


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b'"text"', b'{"busy": "3"}', b'{"busy": true}', b'{"failed": {"task": "x"}}',
     b'{"host": 5}', b'{"dead_threads": "claimer"}', b'{"latency": []}', b"\xff\xfe"],
)  # fmt: skip
def test_a_malformed_heartbeat_raises_the_one_record_error(raw: bytes) -> None:
    with pytest.raises(RecordError):
        Heartbeat.from_json(raw)


def test_results_keep_the_seed_shape_and_every_extra_key() -> None:
    assert Result(status="success", token="tok").to_dict() == {"status": "success", "token": "tok"}
    error = Result(status="error", error="ERROR_CAPTCHA_UNSOLVABLE", error_class="task", id="t1", attempts=2)
    assert json.loads(error.to_json()) == {
        "status": "error",
        "error": "ERROR_CAPTCHA_UNSOLVABLE",
        "error_class": "task",
        "id": "t1",
        "attempts": 2,
    }
    raw = json.dumps({"status": "success", "token": "x", "resumed": True, "added_later": [1]}, sort_keys=True)
    result = Result.from_json(raw)
    assert result.ok and result.resumed and result.extra == {"added_later": [1]}
    assert result.to_json() == raw


@pytest.mark.parametrize("raw", [b"{}", b'{"status": 1}', b'{"status": "success", "token": 5}', b"nope"])
def test_a_malformed_result_raises_the_one_record_error(raw: bytes) -> None:
    with pytest.raises(RecordError):
        Result.from_json(raw)


def test_an_event_writes_its_fields_in_order_and_reads_them_back() -> None:
    event = Event(id="t1", status="success", latency_s=1.5, api_s=None, worker="h:1", host="h", method="m", ts=9.0)
    fields = event.to_fields()
    assert list(fields) == ["id", "status", "error_class", "latency_s", "api_s", "worker", "host", "method", "ts"]
    assert fields["api_s"] == -1  # never submitted, as on the wire before
    wire = {k.encode(): str(v).encode() for k, v in fields.items()}
    assert Event.from_fields(wire) == event
    assert Event.from_fields({b"id": b"t2"}).latency_s is None
    with pytest.raises(RecordError):
        Event.from_fields({b"latency_s": b"soon"})


def test_a_stored_captcha_round_trips_and_an_older_record_has_no_poll_count() -> None:
    record = StoredCaptcha("123", 1764650000.25, "h:1", polls=4)
    assert StoredCaptcha.from_json(record.to_json()) == record
    older = StoredCaptcha.from_json('{"captcha_id": "9", "submitted_at": 1764650000, "worker": "h:2"}')
    assert older == StoredCaptcha("9", 1764650000.0, "h:2", polls=None)


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[]",
        '{"submitted_at": 1.0}',
        '{"captcha_id": "", "submitted_at": 1.0}',
        '{"captcha_id": "1"}',
        '{"captcha_id": "1", "submitted_at": "soon"}',
        '{"captcha_id": "1", "submitted_at": 1.0, "polls": -1}',
        '{"captcha_id": "1", "submitted_at": 1.0, "polls": 2.5}',
    ],
)
def test_an_unusable_stored_captcha_raises_record_error(raw: str) -> None:
    with pytest.raises(RecordError):
        StoredCaptcha.from_json(raw)
