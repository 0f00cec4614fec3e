"""The CaptchaAI client against the sandbox over real HTTP: every call users make."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer
from captcha_fleet.contract.api_client import CaptchaApi
from captcha_fleet.contract.api_errors import NOT_READY, ApiError, ErrorClass
from tests.fleet_helpers import TIME_SCALE

SECRET = "s3cret-key-value"


@pytest.fixture()
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(time_scale=TIME_SCALE, seed=1)) as server:
        yield server


@pytest.fixture()
def api(sandbox: SandboxServer) -> Iterator[CaptchaApi]:
    client = CaptchaApi(sandbox.url, SECRET, connect_timeout_s=2, read_timeout_s=2)
    yield client
    client.close()


def test_submit_then_batch_poll_returns_answers_in_order(api: CaptchaApi) -> None:
    ids = [api.submit("turnstile", {"sitekey": "s", "pageurl": "https://e.test"}) for _ in range(3)]
    assert api.poll_many(ids) == [NOT_READY] * 3
    time.sleep(40 * TIME_SCALE)
    answers = api.poll_many(ids)
    assert all(a.startswith("sandbox") for a in answers)
    assert len(set(answers)) == 3
    assert api.requests_sent["in"] == 3 and api.requests_sent["res"] == 2


def test_post_method_sends_the_file_as_multipart(api: CaptchaApi) -> None:
    image = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
    assert api.submit("post", {"file": image})
    with pytest.raises(ApiError) as info:
        api.submit("post", {"file": "%%% not base64"})
    assert info.value.error_class is ErrorClass.TASK


def test_params_pass_through_including_numbers_and_booleans(api: CaptchaApi, sandbox: SandboxServer) -> None:
    assert api.submit("userrecaptcha", {"googlekey": "k", "pageurl": "https://e.test", "invisible": True, "v": 3})
    assert sandbox.stats()["accepted"] == 1


def test_balance_and_reports(api: CaptchaApi, sandbox: SandboxServer) -> None:
    assert api.balance() == pytest.approx(100.0)
    captcha_id = api.submit("turnstile", {"sitekey": "s", "pageurl": "https://e.test"})
    api.report(captcha_id, good=False)
    api.report(captcha_id, good=True)
    stats = sandbox.stats()
    assert stats["reports_bad"] == 1 and stats["reports_good"] == 1
    assert api.balance() == pytest.approx(100.0 - 0.002)


def test_wrong_key_is_fatal_and_the_key_never_appears_in_the_error(sandbox: SandboxServer) -> None:
    sandbox.update(reject_keys=[SECRET])
    api = CaptchaApi(sandbox.url, SECRET)
    with pytest.raises(ApiError) as info:
        api.submit("turnstile", {"sitekey": "s", "pageurl": "https://e.test"})
    assert info.value.error_class is ErrorClass.FATAL
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_unreachable_api_is_a_capacity_error_after_a_bounded_time() -> None:
    api = CaptchaApi("http://127.0.0.1:9", SECRET, connect_timeout_s=0.5, read_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(ApiError) as info:
        api.submit("turnstile", {"sitekey": "s"})
    assert info.value.error_class is ErrorClass.CAPACITY
    assert SECRET not in str(info.value)
    assert time.monotonic() - started < 5
