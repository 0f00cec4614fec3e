"""Property tests on a live worker: no payload and no API reply can kill it or lose a task."""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.keys import Keys
from captcha_fleet.local_servers.polling import wait_until
from captcha_fleet.worker.service import WorkerService
from tests.fleet_helpers import TIME_SCALE, fast_config, running_worker

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
)
payload_dicts = st.fixed_dictionaries(
    {},
    optional={
        "id": scalars,
        "method": st.sampled_from(["userrecaptcha", "hcaptcha", "base64", "post", "", "x" * 80]) | scalars,
        "params": st.dictionaries(st.sampled_from(["googlekey", "pageurl", "body", "file", "key"]), json_values)
        | json_values,
        "enqueued_at": json_values,
    },
)


def unique_id(payload: dict[str, Any]) -> dict[str, Any]:
    """Keep generated ids' shapes but make valid ones unique, so each example is accounted for alone."""
    if isinstance(payload.get("id"), str) and payload["id"]:
        payload["id"] = f"{payload['id'][:20]}-{uuid.uuid4().hex}"
    return payload


raw_payloads = (
    st.binary(max_size=200)
    | payload_dicts.map(lambda p: json.dumps(unique_id(p)).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
)


def accounted(r: redis.Redis, keys: Keys) -> int:
    return int(r.hlen(keys.results)) + int(r.llen(keys.deadletter))


def settled(r: redis.Redis, keys: Keys, worker_id: str) -> bool:
    return int(r.llen(keys.tasks)) == 0 and int(r.llen(keys.inflight(worker_id))) == 0


def test_no_payload_kills_the_worker_or_is_lost(r: redis.Redis, keys: Keys, redis_url: str) -> None:
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=5)) as sandbox:
        config = fast_config(redis_url, keys.prefix, sandbox.url, task_deadline_s=3.0)
        with running_worker(config) as service:

            @settings(max_examples=120)
            @given(raw=raw_payloads)
            def every_payload_ends_in_a_result_or_the_dead_letter_list(raw: bytes) -> None:
                before = accounted(r, keys)
                r.rpush(keys.tasks, raw)
                assert wait_until(lambda: accounted(r, keys) == before + 1 and settled(r, keys, "test:1"), 10)

            every_payload_ends_in_a_result_or_the_dead_letter_list()
            assert_alive(r, keys, service)


def assert_alive(r: redis.Redis, keys: Keys, service: WorkerService) -> None:
    assert all(t.is_alive() for t in service._threads)
    assert r.exists(keys.heartbeat(service.worker_id))


class JunkApi:
    """An HTTP server that answers in.php and res.php with the next scripted (status, body) pair."""

    def __init__(self) -> None:
        self.answers: dict[str, deque[tuple[int, str]]] = {"/in.php": deque(), "/res.php": deque()}
        self.lock = threading.Lock()
        junk = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.answer()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.answer()

            def answer(self) -> None:
                status, body = junk.next_answer(self.path.split("?")[0])
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def script(self, endpoint: str, answers: list[tuple[int, str]]) -> None:
        with self.lock:
            self.answers[endpoint] = deque(answers)

    def next_answer(self, endpoint: str) -> tuple[int, str]:
        with self.lock:
            queue = self.answers.get(endpoint)
            if not queue:
                return 200, '{"status":0,"request":"CAPCHA_NOT_READY"}'
            return queue.popleft() if len(queue) > 1 else queue[0]


@pytest.fixture()
def junk_api() -> Iterator[JunkApi]:
    api = JunkApi()
    api.thread.start()
    yield api
    api.server.shutdown()
    api.server.server_close()


replies = st.tuples(
    st.sampled_from([200, 200, 200, 429, 500, 502, 403, 404]),
    st.sampled_from(
        [
            '{"status":1,"request":"12345"}',
            '{"status":0,"request":"CAPCHA_NOT_READY"}',
            '{"status":1,"request":"CAPCHA_NOT_READY"}',
            '{"status":1,"request":"token-abc"}',
            '{"status":0,"request":"ERROR_CAPTCHA_UNSOLVABLE"}',
            '{"status":0,"request":"ERROR_NO_SLOT_AVAILABLE"}',
            '{"status":0,"request":"ERROR: 1003"}',
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
            '{"status": "1", "request": null}',
            "OK|777",
            "",
        ]
    )
    | st.text(max_size=60),
)


def test_no_api_reply_kills_the_worker_or_loses_the_task(
    r: redis.Redis, keys: Keys, redis_url: str, junk_api: JunkApi
) -> None:
    config = fast_config(redis_url, keys.prefix, junk_api.url, task_deadline_s=0.6, fatal_recheck_s=0.1)
    with running_worker(config) as service:

        @settings(max_examples=40)
        @given(
            in_php=st.lists(replies, min_size=1, max_size=4),
            res_php=st.lists(replies, min_size=1, max_size=4),
        )
        def every_task_gets_exactly_one_result(in_php: list[tuple[int, str]], res_php: list[tuple[int, str]]) -> None:
            junk_api.script("/in.php", in_php)
            junk_api.script("/res.php", res_php)
            task_id = uuid.uuid4().hex
            params = {"sitekey": "s", "pageurl": "https://p.test/"}  # all hcaptcha needs: the API is asked
            r.rpush(keys.tasks, json.dumps({"id": task_id, "method": "hcaptcha", "params": params}))

            # A fatal answer (403) pauses claiming and keeps the task queued: that is not a loss.
            def ended() -> bool:
                return bool(r.hexists(keys.results, task_id)) or (
                    service.fatal_error is not None and int(r.llen(keys.tasks)) == 1
                )

            assert wait_until(ended, 10)
            if not r.hexists(keys.results, task_id):
                # Clear the account error: the scripted API now accepts, and the task must then finish.
                junk_api.script("/in.php", [(200, '{"status":1,"request":"1"}')])
                junk_api.script("/res.php", [(200, '{"status":1,"request":"ok"}')])
                assert wait_until(lambda: bool(r.hexists(keys.results, task_id)), 10)
            result = json.loads(r.hget(keys.results, task_id) or b"{}")
            assert result["status"] in ("success", "error")
            assert wait_until(lambda: settled(r, keys, service.worker_id), 5)

        every_task_gets_exactly_one_result()
        assert_alive(r, keys, service)
