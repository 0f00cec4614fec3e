"""The sandbox over real HTTP: the CaptchaAI wire format, plans, balance, faults, admin and the CLI."""

from __future__ import annotations

import base64
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from captcha_fleet.apps.sandbox import SandboxConfig, SandboxServer, parse_sandbox_config
from tests.sandbox_requests import KEY, RECAPTCHA

FAST = {"default": {"median_s": 10, "sigma": 0}}  # 0.1 s at time_scale 0.01


def config(**fields: Any) -> SandboxConfig:
    fields.setdefault("seed", 11)
    fields.setdefault("time_scale", 0.01)
    fields.setdefault("solve_time", FAST)
    return parse_sandbox_config(fields)


@pytest.fixture()
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(config()) as server:
        yield server


@pytest.fixture()
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def submit(http: requests.Session, server: SandboxServer, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = {**RECAPTCHA, "json": 1, **params}
    response = http.post(f"{server.url}/in.php", data=body, timeout=5)
    assert response.status_code == 200
    return dict(response.json())


def res(http: requests.Session, server: SandboxServer, **params: Any) -> dict[str, Any]:
    response = http.get(f"{server.url}/res.php", params={"key": KEY, "json": 1, **params}, timeout=5)
    assert response.status_code == 200
    return dict(response.json())


def wait_ready(
    http: requests.Session, server: SandboxServer, captcha_id: str, limit_s: float = 2.0, interval_s: float = 0.03
) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while True:
        answer = res(http, server, action="get", id=captcha_id)
        if answer["request"] != "CAPCHA_NOT_READY" or time.monotonic() > deadline:
            return answer
        time.sleep(interval_s)


# --- in.php ---------------------------------------------------------------------------------------


def test_submit_and_fetch_json(sandbox: SandboxServer, http: requests.Session) -> None:
    accepted = submit(http, sandbox)
    assert accepted["status"] == 1 and accepted["request"].isdigit()
    assert res(http, sandbox, action="get", id=accepted["request"]) == {
        "status": 0,
        "request": "CAPCHA_NOT_READY",
    }
    answer = wait_ready(http, sandbox, accepted["request"])
    assert answer["status"] == 1
    assert answer["request"].startswith(f"sandbox-token-{accepted['request']}-")


def test_plain_text_protocol(sandbox: SandboxServer, http: requests.Session) -> None:
    response = http.post(f"{sandbox.url}/in.php", data=RECAPTCHA, timeout=5)
    assert response.text.startswith("OK|")
    captcha_id = response.text.split("|", 1)[1]
    get = {"key": KEY, "action": "get", "id": captcha_id}
    assert http.get(f"{sandbox.url}/res.php", params=get, timeout=5).text == "CAPCHA_NOT_READY"
    time.sleep(0.15)
    assert http.get(f"{sandbox.url}/res.php", params=get, timeout=5).text.startswith("OK|sandbox-token-")
    assert http.get(f"{sandbox.url}/res.php", params={"key": KEY, "action": "getbalance"}).text == "99.998"
    bad = http.post(f"{sandbox.url}/in.php", data={**RECAPTCHA, "key": "bad-key"}, timeout=5)
    assert bad.text == "ERROR_WRONG_USER_KEY"


def test_submit_by_get_and_by_multipart(sandbox: SandboxServer, http: requests.Session) -> None:
    by_get = http.get(f"{sandbox.url}/in.php", params={**RECAPTCHA, "json": "1"}, timeout=5).json()
    assert by_get["status"] == 1
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    posted = http.post(
        f"{sandbox.url}/in.php",
        data={"key": KEY, "method": "post", "json": "1"},
        files={"file": ("captcha.png", png, "image/png")},
        timeout=5,
    ).json()
    assert posted["status"] == 1
    form_only = http.post(
        f"{sandbox.url}/in.php",
        files={
            "key": (None, KEY),
            "method": (None, "base64"),
            "body": (None, base64.b64encode(png).decode()),
            "json": (None, "1"),
        },
        timeout=5,
    ).json()
    assert form_only["status"] == 1


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"key": ""}, "ERROR_KEY_DOES_NOT_EXIST"),
        ({"key": "bad-key"}, "ERROR_WRONG_USER_KEY"),
        ({"key": "banned-key"}, "IP_BANNED"),
        ({"method": "teleport"}, "ERROR_BAD_PARAMETERS"),
        ({"googlekey": ""}, "ERROR_GOOGLEKEY"),
        ({"pageurl": ""}, "ERROR_PAGEURL"),
        ({"method": "hcaptcha"}, "ERROR_GOOGLEKEY"),
        ({"method": "turnstile", "sitekey": "0x4AAA", "pageurl": ""}, "ERROR_PAGEURL"),
        ({"method": "base64", "body": ""}, "ERROR_ZERO_CAPTCHA_FILESIZE"),
        ({"method": "base64", "body": "%%%not-base64%%%"}, "ERROR_IMAGE_TYPE_NOT_SUPPORTED"),
        ({"method": "post"}, "ERROR_ZERO_CAPTCHA_FILESIZE"),
    ],
)
def test_submit_errors(http: requests.Session, params: dict[str, str], error: str) -> None:
    with SandboxServer(config(banned_keys=["banned-key"])) as server:
        assert submit(http, server, **params) == {"status": 0, "request": error}
        stats = server.stats()
        assert stats["accepted"] == 0
        assert stats["rejected_key"] + stats["rejected_params"] == 1


def test_accept_keys_list(http: requests.Session) -> None:
    with SandboxServer(config(accept_keys=["only-this"])) as server:
        assert submit(http, server)["request"] == "ERROR_WRONG_USER_KEY"
        assert submit(http, server, key="only-this")["status"] == 1


def test_missing_key_on_res_php(sandbox: SandboxServer, http: requests.Session) -> None:
    answer = http.get(f"{sandbox.url}/res.php", params={"action": "getbalance", "json": "1"}, timeout=5).json()
    assert answer == {"status": 0, "request": "ERROR_KEY_DOES_NOT_EXIST"}


# --- res.php --------------------------------------------------------------------------------------


def test_wrong_captcha_id(sandbox: SandboxServer, http: requests.Session) -> None:
    assert res(http, sandbox, action="get", id="12345") == {"status": 0, "request": "ERROR_WRONG_CAPTCHA_ID"}


def test_batch_ids_in_order(http: requests.Session) -> None:
    solve_time = {"default": {"median_s": 100, "sigma": 0}, "base64": {"median_s": 1, "sigma": 0}}
    with SandboxServer(config(solve_time=solve_time)) as server:
        slow = submit(http, server)["request"]
        fast = submit(http, server, method="base64", body=base64.b64encode(b"img").decode())["request"]
        time.sleep(0.05)
        answer = res(http, server, action="get", ids=f"{slow},999,{fast}")
        parts = answer["request"].split("|")
        assert answer["status"] == 1
        assert parts[0] == "CAPCHA_NOT_READY"
        assert parts[1] == "ERROR_WRONG_CAPTCHA_ID"
        assert parts[2].startswith(f"sandbox-token-{fast}-")
        none_ready = res(http, server, action="get", ids=f"{slow},{slow}")
        assert none_ready == {"status": 0, "request": "CAPCHA_NOT_READY|CAPCHA_NOT_READY"}
        assert server.stats()["res_ids_polled"] == 5


def test_thread_limited_plan_refuses_then_frees(http: requests.Session) -> None:
    # ~1 s solves: both threads stay busy through the third submit even on a loaded machine
    with SandboxServer(config(threads=2, solve_time={"default": {"median_s": 100.0, "sigma": 0.05}})) as server:
        first = submit(http, server)
        assert submit(http, server)["status"] == 1
        assert submit(http, server) == {"status": 0, "request": "ERROR_NO_SLOT_AVAILABLE"}
        assert server.stats()["in_flight"] == 2
        time.sleep(0.9)  # most of the solve: the polls below stay within the provider's per-CAPTCHA budget
        assert wait_ready(http, server, first["request"], limit_s=5.0, interval_s=0.25)["status"] == 1
        time.sleep(0.02)
        assert submit(http, server)["status"] == 1
        stats = server.stats()
        assert (stats["refused_no_slot"], stats["max_in_flight"]) == (1, 2)


def test_time_compression(http: requests.Session) -> None:
    solve_time = {"default": {"median_s": 15, "sigma": 0.3}}
    with SandboxServer(config(solve_time=solve_time)) as server:
        started = time.monotonic()
        captcha_id = submit(http, server)["request"]
        assert wait_ready(http, server, captcha_id)["status"] == 1
        assert time.monotonic() - started < 0.8


def test_balance_charge_and_refund(http: requests.Session) -> None:
    with SandboxServer(config(balance=0.004, unsolvable_rate={"hcaptcha": 1.0})) as server:
        assert res(http, server, action="getbalance") == {"status": 1, "request": "0.004"}
        assert submit(http, server)["status"] == 1
        doomed = submit(http, server, method="hcaptcha", sitekey="s")["request"]
        assert res(http, server, action="getbalance")["request"] == "0"
        assert submit(http, server) == {"status": 0, "request": "ERROR_ZERO_BALANCE"}
        assert wait_ready(http, server, doomed) == {"status": 0, "request": "ERROR_CAPTCHA_UNSOLVABLE"}
        assert res(http, server, action="getbalance")["request"] == "0.002"
        stats = server.stats()
        assert (stats["refused_balance"], stats["unsolvable"], stats["spent"]) == (1, 1, 0.002)


def test_unsolvable_rate_one(http: requests.Session) -> None:
    with SandboxServer(config(unsolvable_rate=1.0)) as server:
        ids = [submit(http, server)["request"] for _ in range(3)]
        time.sleep(0.12)
        answer = res(http, server, action="get", ids=",".join(ids))
        assert answer == {"status": 0, "request": "|".join(["ERROR_CAPTCHA_UNSOLVABLE"] * 3)}


def test_poll_limit(http: requests.Session) -> None:
    # A 10 s solve: the polls find it not ready however slow the machine (0.1 s failed once beside CI's lab runs).
    slow = {"default": {"median_s": 1000, "sigma": 0}}
    with SandboxServer(config(max_polls_per_captcha=2, solve_time=slow)) as server:
        captcha_id = submit(http, server)["request"]
        for _ in range(2):
            assert res(http, server, action="get", id=captcha_id)["request"] == "CAPCHA_NOT_READY"
        assert res(http, server, action="get", id=captcha_id) == {"status": 0, "request": "ERROR: 1005"}
        assert server.stats()["over_polled"] == 1


def test_reports(sandbox: SandboxServer, http: requests.Session) -> None:
    captcha_id = submit(http, sandbox)["request"]
    assert res(http, sandbox, action="reportbad", id=captcha_id)["request"] == "OK_REPORT_RECORDED"
    assert res(http, sandbox, action="reportgood", id=captcha_id)["request"] == "OK_REPORT_RECORDED"
    stats = sandbox.stats()
    assert (stats["reports_bad"], stats["reports_good"]) == (1, 1)


def test_answers_expire_after_retention(http: requests.Session) -> None:
    # 1 s at time_scale 0.01: long enough for the poll to see the answer on a busy machine (0.05 s was not)
    with SandboxServer(config(retention_s=100)) as server:
        captcha_id = submit(http, server)["request"]
        assert wait_ready(http, server, captcha_id)["status"] == 1
        time.sleep(1.1)
        assert res(http, server, action="get", id=captcha_id)["request"] == "ERROR_WRONG_CAPTCHA_ID"


# --- faults ---------------------------------------------------------------------------------------


def test_fault_http_5xx_html(sandbox: SandboxServer, http: requests.Session) -> None:
    sandbox.update(faults={"http_500": 1.0})
    response = http.post(f"{sandbox.url}/in.php", data={**RECAPTCHA, "json": 1}, timeout=5)
    assert 500 <= response.status_code < 600
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<center>nginx</center>" in response.text
    assert sandbox.stats()["faults"]["http_500"] == 1


def test_fault_html_200(sandbox: SandboxServer, http: requests.Session) -> None:
    sandbox.update(faults={"html_200": 1.0})
    response = http.get(f"{sandbox.url}/res.php", params={"key": KEY, "action": "getbalance", "json": "1"})
    assert response.status_code == 200
    assert response.text.lstrip().startswith("<!DOCTYPE html>")
    with pytest.raises(ValueError):
        response.json()


def test_fault_reset(sandbox: SandboxServer, http: requests.Session) -> None:
    sandbox.update(faults={"reset": 1.0})
    with pytest.raises(requests.ConnectionError):
        http.post(f"{sandbox.url}/in.php", data={**RECAPTCHA, "json": 1}, timeout=5)
    assert sandbox.stats()["faults"]["reset"] == 1


def test_fault_slow(sandbox: SandboxServer, http: requests.Session) -> None:
    sandbox.update(faults={"slow": 1.0}, slow_delay_s=0.4)
    with pytest.raises(requests.ReadTimeout):
        http.get(f"{sandbox.url}/res.php", params={"key": KEY, "action": "getbalance"}, timeout=0.1)
    started = time.monotonic()
    response = http.get(f"{sandbox.url}/res.php", params={"key": KEY, "action": "getbalance"}, timeout=5)
    assert response.text == "100"
    assert time.monotonic() - started >= 0.35


def test_fault_error_100x_and_no_slot(sandbox: SandboxServer, http: requests.Session) -> None:
    sandbox.update(faults={"error_1001": 1.0})
    answer = submit(http, sandbox)
    assert answer["status"] == 0 and answer["request"] in {f"ERROR: {n}" for n in (1001, 1002, 1003, 1004)}
    sandbox.update(faults={"error_1001": 0.0, "no_slot": 1.0})
    assert submit(http, sandbox) == {"status": 0, "request": "ERROR_NO_SLOT_AVAILABLE"}
    stats = sandbox.stats()
    assert stats["accepted"] == 0
    assert (stats["faults"]["error_1001"], stats["faults"]["no_slot"]) == (1, 1)


def test_fault_endpoints_and_admin_are_spared(sandbox: SandboxServer, http: requests.Session) -> None:
    sandbox.update(faults={"http_500": 1.0}, fault_endpoints=["in.php"])
    assert res(http, sandbox, action="getbalance")["status"] == 1
    assert http.get(f"{sandbox.url}/admin/stats", timeout=5).status_code == 200
    assert http.post(f"{sandbox.url}/in.php", data=RECAPTCHA, timeout=5).status_code >= 500


# --- admin ----------------------------------------------------------------------------------------


def test_admin_stats_counts(sandbox: SandboxServer, http: requests.Session) -> None:
    first = submit(http, sandbox)["request"]
    submit(http, sandbox, key="bad-key")
    submit(http, sandbox, method="nope")
    res(http, sandbox, action="getbalance")
    wait_ready(http, sandbox, first)
    res(http, sandbox, action="get", ids=f"{first},{first}")
    stats = http.get(f"{sandbox.url}/admin/stats", timeout=5).json()
    assert stats["in_php"] == 3
    assert stats["res_php"] >= 3
    assert stats["requests_total"] == stats["in_php"] + stats["res_php"] + 1
    assert (stats["accepted"], stats["rejected_key"], stats["rejected_params"]) == (1, 1, 1)
    assert (stats["getbalance"], stats["solved"], stats["in_flight"]) == (1, 1, 0)
    assert stats["balance"] == pytest.approx(99.998)
    assert stats["spent"] == pytest.approx(0.002)
    assert set(stats["faults"]) == {"http_500", "html_200", "slow", "reset", "error_1001", "no_slot"}
    expected = {"res_ids_polled", "reports_bad", "reports_good", "refused_no_slot", "refused_balance"}
    assert expected | {"unsolvable", "max_in_flight", "over_polled"} <= set(stats)
    assert stats == {**sandbox.stats(), "requests_total": stats["requests_total"]}


def test_admin_config_and_reset(sandbox: SandboxServer, http: requests.Session) -> None:
    changed = http.post(f"{sandbox.url}/admin/config", json={"threads": 1, "balance": 3}, timeout=5)
    assert changed.status_code == 200 and changed.json()["threads"] == 1
    assert sandbox.config.threads == 1
    assert submit(http, sandbox)["status"] == 1
    assert submit(http, sandbox)["request"] == "ERROR_NO_SLOT_AVAILABLE"
    assert res(http, sandbox, action="getbalance")["request"] == "2.998"
    bad = http.post(f"{sandbox.url}/admin/config", json={"threads": "lots"}, timeout=5)
    assert bad.status_code == 400 and "config.threads" in bad.json()["error"]
    assert http.post(f"{sandbox.url}/admin/config", data="{", timeout=5).status_code == 400
    assert http.get(f"{sandbox.url}/admin/config", timeout=5).json()["balance"] == 3.0
    assert http.post(f"{sandbox.url}/admin/reset", timeout=5).json() == {"ok": True}
    stats = sandbox.stats()
    assert (stats["accepted"], stats["in_flight"], stats["balance"]) == (0, 0, 3.0)
    assert http.get(f"{sandbox.url}/admin/nothing", timeout=5).status_code == 404
    assert http.get(f"{sandbox.url}/favicon.ico", timeout=5).status_code == 404


# --- the server itself ----------------------------------------------------------------------------


def test_keys_are_never_logged(caplog: pytest.LogCaptureFixture, http: requests.Session) -> None:
    secret = "s3cret-key-value"
    with caplog.at_level(logging.DEBUG, logger="captcha_fleet.apps.sandbox"), SandboxServer(config()) as server:
        http.get(f"{server.url}/res.php", params={"key": secret, "action": "getbalance"}, timeout=5)
        http.post(f"{server.url}/in.php", data={**RECAPTCHA, "key": secret}, timeout=5)
    assert "res.php" in caplog.text
    assert secret not in caplog.text


def test_stop_closes_keep_alive_connections_and_threads(http: requests.Session) -> None:
    before = set(threading.enumerate())  # other tests' threads may come and go meanwhile: track ours only

    def ours() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before]

    server = SandboxServer(config()).start()
    for _ in range(3):
        res(http, server, action="getbalance")  # one keep-alive connection stays open
    assert ours()
    server.stop()
    deadline = time.monotonic() + 2
    while ours() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ours() == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/admin/stats", timeout=1)


def test_stop_interrupts_a_slow_answer() -> None:
    server = SandboxServer(config(faults={"slow": 1.0}, slow_delay_s=30)).start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            requests.get(f"{server.url}/res.php", params={"key": KEY, "action": "getbalance"}, timeout=10)
        except requests.RequestException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.1)
    started = time.monotonic()
    server.stop()
    caller.join(5)
    assert time.monotonic() - started < 2
    assert errors and isinstance(errors[0], requests.ConnectionError)


def test_cli_port_file(tmp_path: Path) -> None:
    port_file = tmp_path / "sandbox.port"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "captcha_fleet.apps.cli", "sandbox", "--port", "0", "--port-file", str(port_file),
         "--time-scale", "0.01", "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the sandbox never wrote its port file"
            time.sleep(0.05)
        port = int(port_file.read_text().strip())
        answer = requests.get(
            f"http://127.0.0.1:{port}/res.php",
            params={"key": KEY, "action": "getbalance", "json": "1"},
            timeout=5,
        ).json()
        assert answer == {"status": 1, "request": "100"}
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert f"sandbox listening on http://127.0.0.1:{port}" in out
    assert not port_file.exists()


def test_cli_reads_the_sandbox_section(tmp_path: Path) -> None:
    from captcha_fleet.apps.cli import build_parser
    from captcha_fleet.apps.sandbox.cli import config_from_args

    fleet = tmp_path / "fleet.yml"
    fleet.write_text("sandbox:\n  threads: 5\n  balance: 7.5\n  faults: {slow: 0.1}\n", encoding="utf-8")
    args = build_parser().parse_args(["sandbox", "--config", str(fleet), "--threads", "9", "--seed", "3"])
    loaded = config_from_args(args)
    assert (loaded.threads, loaded.balance, loaded.seed, loaded.fault_rate("slow")) == (9, 7.5, 3, 0.1)


def test_admin_payments_counts_accepted_submits_per_page(sandbox: SandboxServer, http: requests.Session) -> None:
    """The game day's checker reads payments from a sandbox in another process: only paid submits count."""
    for page in ("https://gameday.test/a", "https://gameday.test/a", "https://gameday.test/b"):
        assert submit(http, sandbox, pageurl=page)["status"] == 1
    assert submit(http, sandbox, pageurl="https://gameday.test/c", key="bad-key")["status"] == 0
    payments = http.get(f"{sandbox.url}/admin/payments", timeout=5).json()
    assert payments == {"https://gameday.test/a": 2, "https://gameday.test/b": 1}
    assert payments == sandbox.payments()
    assert http.post(f"{sandbox.url}/admin/payments", timeout=5).status_code == 404  # read only
