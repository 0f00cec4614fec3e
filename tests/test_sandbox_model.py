"""The sandbox's protocol logic and config parsing, driven by a fake clock (no HTTP, no sleeping)."""

from __future__ import annotations

import base64

import pytest

from captcha_fleet.apps.sandbox import SandboxConfig, SolveTime, parse_sandbox_config
from captcha_fleet.apps.sandbox.faults import FaultInjector
from captcha_fleet.apps.sandbox.model import Reply, Sandbox, check_params, format_balance
from captcha_fleet.contract.config import ConfigError
from tests.sandbox_requests import KEY, RECAPTCHA


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, **fields: object) -> Sandbox:
    fields.setdefault("seed", 7)
    fields.setdefault("solve_time", {"default": SolveTime(10.0, 0.0)})
    return Sandbox(parse_sandbox_config(fields), clock=clock)


def submit(sandbox: Sandbox, **params: str) -> Reply:
    return sandbox.submit({**RECAPTCHA, **params})


def test_submit_then_ready_after_the_solve_time(clock: FakeClock) -> None:
    sandbox = make(clock)
    reply = submit(sandbox)
    assert reply.status == 1 and reply.text == f"OK|{reply.request}"
    assert sandbox.get(reply.request) == Reply(0, "CAPCHA_NOT_READY", "CAPCHA_NOT_READY")
    clock.advance(9.9)
    assert sandbox.get(reply.request).request == "CAPCHA_NOT_READY"
    clock.advance(0.1)
    answer = sandbox.get(reply.request)
    assert answer.status == 1
    assert answer.request.startswith(f"sandbox-token-{reply.request}-")
    assert answer.text == f"OK|{answer.request}"
    assert sandbox.stats()["solved"] == 1


def test_tokens_are_unique_and_free_of_separators(clock: FakeClock) -> None:
    sandbox = make(clock)
    ids = [submit(sandbox).request for _ in range(50)]
    clock.advance(11)
    tokens = [sandbox.get(i).request for i in ids]
    assert len(set(tokens)) == 50
    assert not any("|" in t or "," in t for t in tokens)


def test_time_scale_compresses_solve_and_retention(clock: FakeClock) -> None:
    sandbox = make(clock, time_scale=0.01, solve_time={"default": {"median_s": 15, "sigma": 0}})
    captcha = submit(sandbox).request
    clock.advance(0.149)
    assert sandbox.get(captcha).request == "CAPCHA_NOT_READY"
    clock.advance(0.002)
    assert sandbox.get(captcha).status == 1
    clock.advance(300 * 0.01)  # retention 300 s scaled
    assert sandbox.get(captcha).request == "ERROR_WRONG_CAPTCHA_ID"


def test_solve_times_follow_the_lognormal_median(clock: FakeClock) -> None:
    sandbox = make(clock, solve_time={"default": {"median_s": 15, "sigma": 0.3}})
    ids = [submit(sandbox).request for _ in range(400)]
    clock.advance(15)
    ready = sum(sandbox.get(i).status for i in ids)
    assert 140 < ready < 260  # about half are done at the median


def test_key_errors(clock: FakeClock) -> None:
    sandbox = make(clock, accept_keys=["good", "other"], banned_keys=["banned"])
    assert sandbox.submit({**RECAPTCHA, "key": ""}).request == "ERROR_KEY_DOES_NOT_EXIST"
    assert sandbox.submit({k: v for k, v in RECAPTCHA.items() if k != "key"}).request == ("ERROR_KEY_DOES_NOT_EXIST")
    assert sandbox.submit({**RECAPTCHA, "key": "stranger"}).request == "ERROR_WRONG_USER_KEY"
    assert sandbox.submit({**RECAPTCHA, "key": "banned"}).request == "IP_BANNED"
    assert sandbox.submit({**RECAPTCHA, "key": "good"}).status == 1
    assert sandbox.result({"key": "stranger", "action": "getbalance"}).request == "ERROR_WRONG_USER_KEY"
    assert sandbox.stats()["rejected_key"] == 5


def test_default_keys_accept_anything_but_bad_key(clock: FakeClock) -> None:
    sandbox = make(clock)
    assert submit(sandbox, key="whatever").status == 1
    assert submit(sandbox, key="bad-key").request == "ERROR_WRONG_USER_KEY"


@pytest.mark.parametrize(
    ("method", "params", "error"),
    [
        ("userrecaptcha", {"pageurl": "https://x/"}, "ERROR_GOOGLEKEY"),
        ("userrecaptcha", {"googlekey": "g"}, "ERROR_PAGEURL"),
        ("hcaptcha", {"pageurl": "https://x/"}, "ERROR_GOOGLEKEY"),
        ("turnstile", {"sitekey": "s"}, "ERROR_PAGEURL"),
        ("base64", {}, "ERROR_ZERO_CAPTCHA_FILESIZE"),
        ("base64", {"body": "   "}, "ERROR_ZERO_CAPTCHA_FILESIZE"),
        ("base64", {"body": "not base64!"}, "ERROR_IMAGE_TYPE_NOT_SUPPORTED"),
        ("post", {}, "ERROR_ZERO_CAPTCHA_FILESIZE"),
        ("nonsense", {}, "ERROR_BAD_PARAMETERS"),
        ("", {}, "ERROR_BAD_PARAMETERS"),
    ],
)
def test_parameter_errors(method: str, params: dict[str, str], error: str) -> None:
    assert check_params(method, params, {}) == error


def test_valid_parameters() -> None:
    image = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
    assert check_params("base64", {"body": image}, {}) is None
    assert check_params("post", {}, {"file": b"GIF89a"}) is None
    assert check_params("hcaptcha", {"sitekey": "s", "pageurl": "https://x/"}, {}) is None
    assert check_params("base64", {"body": base64.b64encode(b"x" * (1024 * 1024 + 1)).decode()}, {}) == (
        "ERROR_TOO_BIG_CAPTCHA_FILESIZE"
    )


def test_thread_limited_plan_refuses_then_frees(clock: FakeClock) -> None:
    sandbox = make(clock, threads=3)
    for _ in range(3):
        assert submit(sandbox).status == 1
    assert submit(sandbox).request == "ERROR_NO_SLOT_AVAILABLE"
    assert sandbox.stats()["in_flight"] == 3
    clock.advance(10)
    assert sandbox.stats()["in_flight"] == 0
    assert submit(sandbox).status == 1
    stats = sandbox.stats()
    assert (stats["accepted"], stats["refused_no_slot"], stats["max_in_flight"]) == (4, 1, 3)


def test_thousands_in_flight(clock: FakeClock) -> None:
    sandbox = make(clock, solve_time={"default": {"median_s": 15, "sigma": 0.3}})
    for _ in range(2500):
        assert submit(sandbox).status == 1
    assert sandbox.stats()["in_flight"] == 2500
    clock.advance(120)
    assert sandbox.stats()["in_flight"] == 0


def test_balance_charge_refund_and_zero_balance(clock: FakeClock) -> None:
    sandbox = make(clock, balance=0.005, price_per_solve={"default": 0.002, "base64": 0.001})
    assert submit(sandbox).status == 1
    assert submit(sandbox).status == 1
    assert sandbox.result({"key": KEY, "action": "getbalance"}) == Reply(1, "0.001", "0.001")
    assert submit(sandbox).request == "ERROR_ZERO_BALANCE"
    image = base64.b64encode(b"image").decode()
    assert sandbox.submit({"key": KEY, "method": "base64", "body": image}).status == 1
    stats = sandbox.stats()
    assert stats["balance"] == pytest.approx(0.0)
    assert stats["spent"] == pytest.approx(0.005)
    assert stats["refused_balance"] == 1


def test_unsolvable_is_refunded(clock: FakeClock) -> None:
    sandbox = make(clock, unsolvable_rate=1.0, balance=1.0)
    captcha = submit(sandbox).request
    assert sandbox.stats()["balance"] == pytest.approx(0.998)
    clock.advance(10)
    assert sandbox.get(captcha) == Reply.error("ERROR_CAPTCHA_UNSOLVABLE")
    stats = sandbox.stats()
    assert stats["balance"] == pytest.approx(1.0)
    assert stats["spent"] == pytest.approx(0.0)
    assert (stats["unsolvable"], stats["solved"]) == (1, 0)


def test_unsolvable_rate_per_method(clock: FakeClock) -> None:
    sandbox = make(clock, unsolvable_rate={"hcaptcha": 1.0})
    good = submit(sandbox).request
    bad = sandbox.submit({"key": KEY, "method": "hcaptcha", "sitekey": "s", "pageurl": "https://x/"}).request
    clock.advance(10)
    assert sandbox.get(good).status == 1
    assert sandbox.get(bad).request == "ERROR_CAPTCHA_UNSOLVABLE"


def test_batch_answers_in_order(clock: FakeClock) -> None:
    sandbox = make(clock, solve_time={"default": 10, "base64": 1})
    slow = submit(sandbox).request
    fast = sandbox.submit({"key": KEY, "method": "base64", "body": "aGVsbG8="}).request
    reply = sandbox.result({"key": KEY, "action": "get", "ids": f"{slow},{fast}"})
    assert reply == Reply(0, "CAPCHA_NOT_READY|CAPCHA_NOT_READY", "CAPCHA_NOT_READY|CAPCHA_NOT_READY")
    clock.advance(1)
    reply = sandbox.result({"key": KEY, "action": "get", "ids": f"{slow},nope,{fast}"})
    parts = reply.request.split("|")
    assert reply.status == 1
    assert parts[:2] == ["CAPCHA_NOT_READY", "ERROR_WRONG_CAPTCHA_ID"]
    assert parts[2].startswith(f"sandbox-token-{fast}-")
    assert sandbox.stats()["res_ids_polled"] == 5


def test_poll_limit_answers_1005(clock: FakeClock) -> None:
    sandbox = make(clock, max_polls_per_captcha=3)
    captcha = submit(sandbox).request
    other = submit(sandbox).request
    for _ in range(3):
        assert sandbox.get(captcha).request == "CAPCHA_NOT_READY"
    assert sandbox.get(captcha).request == "ERROR: 1005"
    clock.advance(10)
    assert sandbox.get(captcha).request == "ERROR: 1005"
    assert sandbox.get(other).status == 1  # the limit is per captcha
    assert sandbox.stats()["over_polled"] == 2


def test_reports_and_unknown_action(clock: FakeClock) -> None:
    sandbox = make(clock)
    captcha = submit(sandbox).request
    assert sandbox.result({"key": KEY, "action": "reportbad", "id": captcha}).request == "OK_REPORT_RECORDED"
    assert sandbox.result({"key": KEY, "action": "reportgood", "id": captcha}).text == "OK_REPORT_RECORDED"
    assert sandbox.result({"key": KEY, "action": "reportbad", "id": "1"}).request == "ERROR_WRONG_CAPTCHA_ID"
    assert sandbox.result({"key": KEY, "action": "dance"}).request == "ERROR_BAD_PARAMETERS"
    assert sandbox.result({"key": KEY, "action": "get"}).request == "ERROR_WRONG_CAPTCHA_ID"
    stats = sandbox.stats()
    assert (stats["reports_bad"], stats["reports_good"]) == (1, 1)


def test_update_and_reset(clock: FakeClock) -> None:
    sandbox = make(clock, threads=1)
    first = submit(sandbox).request
    assert submit(sandbox).request == "ERROR_NO_SLOT_AVAILABLE"
    sandbox.update({"threads": None, "balance": 5.0})
    assert submit(sandbox).status == 1
    assert sandbox.stats()["balance"] == pytest.approx(4.998)
    sandbox.reset()
    stats = sandbox.stats()
    assert (stats["accepted"], stats["in_flight"], stats["stored"], stats["balance"]) == (0, 0, 0, 5.0)
    assert sandbox.get(first).request == "ERROR_WRONG_CAPTCHA_ID"
    assert submit(sandbox).request != first  # ids keep counting across resets


def test_same_seed_same_behaviour(clock: FakeClock) -> None:
    runs = []
    for _ in range(2):
        sandbox = make(FakeClock(), seed=42, unsolvable_rate=0.5)
        runs.append([submit(sandbox).request for _ in range(5)])
    assert runs[0] == runs[1]


def test_format_balance() -> None:
    assert format_balance(100.0) == "100"
    assert format_balance(99.998) == "99.998"
    assert format_balance(0.0) == "0"
    assert format_balance(1e-7) == "0"


# --- config ------------------------------------------------------------------------------------


def test_config_defaults() -> None:
    config = SandboxConfig()
    assert config.solve_time_for("userrecaptcha") == SolveTime(15.0, 0.3)
    assert config.solve_time_for("base64") == SolveTime(5.0, 0.3)
    assert config.price_for("hcaptcha") == 0.002
    assert config.unsolvable_rate_for("post") == 0.0
    assert (config.threads, config.balance, config.max_polls_per_captcha) == (None, 100.0, 20)
    assert config.reject_keys == ("bad-key",)
    assert config.fault_endpoints == ("in.php", "res.php")


def test_config_parse_merges_mappings() -> None:
    config = parse_sandbox_config(
        {
            "solve_time": {"default": {"median_s": 2}},
            "faults": {"slow": 0.1},
            "price_per_solve": {"post": 0.01},
        }
    )
    assert config.solve_time_for("hcaptcha") == SolveTime(2.0, 0.3)
    assert config.solve_time_for("base64") == SolveTime(5.0, 0.3)
    assert config.price_for("post") == 0.01 and config.price_for("hcaptcha") == 0.002
    updated = config.updated({"faults": {"reset": 0.2}})
    assert dict(updated.faults) == {"slow": 0.1, "reset": 0.2}
    assert dict(updated.updated({"faults": None}).faults) == {}
    assert parse_sandbox_config(config.to_dict()) == config


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"threads": "many"}, "sandbox.threads"),
        ({"threads": -1}, "sandbox.threads"),
        ({"time_scale": 0}, "sandbox.time_scale"),
        ({"solve_time": {"post": {"median": 1}}}, "sandbox.solve_time.post.median"),
        ({"faults": {"explode": 0.1}}, "sandbox.faults.explode"),
        ({"faults": {"slow": 1.5}}, "sandbox.faults.slow"),
        ({"faults": {"slow": 0.6, "reset": 0.6}}, "sandbox.faults"),
        ({"unsolvable_rate": {"post": 2}}, "sandbox.unsolvable_rate.post"),
        ({"accept_keys": "k"}, "sandbox.accept_keys"),
        ({"fault_endpoints": ["admin"]}, "sandbox.fault_endpoints"),
        ({"colour": "blue"}, "sandbox.colour"),
    ],
)
def test_config_errors_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_sandbox_config(data)


def test_fault_decisions_match_the_rates() -> None:
    injector = FaultInjector(seed=3)
    config = parse_sandbox_config({"faults": {"http_500": 0.2, "reset": 0.1}, "fault_endpoints": ["in.php"]})
    kinds = [injector.decide(config, "in.php") for _ in range(5000)]
    assert 800 < kinds.count("http_500") < 1200
    assert 350 < kinds.count("reset") < 650
    assert set(kinds) == {None, "http_500", "reset"}
    assert all(injector.decide(config, "res.php") is None for _ in range(100))
