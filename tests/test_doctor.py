"""``captcha-fleet doctor`` end to end: real redis-server, the sandbox API over HTTP, closed loopback ports."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from captcha_fleet.apps.cli import main
from captcha_fleet.apps.sandbox.config import SandboxConfig
from captcha_fleet.apps.sandbox.server import SandboxServer
from captcha_fleet.local_servers.redis_server import free_port

GOOD_KEY = "doctor-good-key-8f3a"
BAD_KEY = "doctor-bad-key-77c1"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(reject_keys=(BAD_KEY,), balance=42.5, seed=1)) as server:
        yield server


@pytest.fixture
def good_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment holds a key the sandbox accepts."""
    monkeypatch.setenv("CAPTCHAAI_KEY", GOOD_KEY)


@pytest.fixture
def fleet(redis_url: str, sandbox: SandboxServer) -> list[str]:
    """The flags that point doctor at the real redis-server and the sandbox."""
    return ["--redis-url", redis_url, "--api-base", sandbox.url]


def doctor(capsys: pytest.CaptureFixture[str], *args: str, human: bool = False) -> tuple[int, Any, str]:
    """Run doctor through the real CLI entry point; return (exit code, parsed JSON or text, all output)."""
    argv = ["doctor", *args] if human else ["doctor", "--json", *args]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, (out if human else json.loads(out)), out + err


def by_name(report: Any) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}


def closed_port_inventory(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.yml"
    path.write_text(
        "all:\n"
        "  vars:\n"
        "    ansible_user: deploy\n"
        "  children:\n"
        "    workers:\n"
        "      hosts:\n"
        "        w1:\n"
        "          ansible_host: 127.0.0.1\n"
        f"          ansible_port: {free_port()}\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.usefixtures("good_key")
def test_passes_against_real_redis_and_sandbox(capsys: pytest.CaptureFixture[str], fleet: list[str]) -> None:
    code, report, output = doctor(capsys, *fleet)
    checks = by_name(report)
    assert code == 0, output
    assert report["ok"] is True
    assert checks["config"]["status"] == "ok"
    assert checks["redis"]["status"] == "ok"
    assert "read/write ok" in checks["redis"]["detail"]
    assert checks["api"]["status"] == "ok"
    assert checks["api"]["data"]["balance"] == pytest.approx(42.5)
    assert checks["hosts"]["status"] == "skip"
    assert GOOD_KEY not in output


@pytest.mark.usefixtures("good_key")
def test_leaves_no_key_behind(capsys: pytest.CaptureFixture[str], fleet: list[str], r: Any) -> None:
    doctor(capsys, *fleet, "--key-prefix", "dr")
    assert r.keys("*") == []


@pytest.mark.usefixtures("good_key")
def test_human_output_is_a_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fleet: list[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, text, output = doctor(capsys, *fleet, human=True)
    assert code == 0
    assert "redis" in text and "balance 42.50" in text and "all checks passed" in text
    assert GOOD_KEY not in output


def test_wrong_key_fails_clearly_without_printing_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fleet: list[str]
) -> None:
    monkeypatch.setenv("CAPTCHAAI_KEY", BAD_KEY)
    code, report, output = doctor(capsys, *fleet)
    api = by_name(report)["api"]
    assert code == 1
    assert api["status"] == "fail"
    assert "API key was rejected" in api["detail"]
    assert "ERROR_WRONG_USER_KEY" in api["detail"] or "ERROR_KEY_DOES_NOT_EXIST" in api["detail"]
    assert by_name(report)["redis"]["status"] == "ok"
    assert BAD_KEY not in output


def test_missing_key_is_a_clear_failure(capsys: pytest.CaptureFixture[str], fleet: list[str]) -> None:
    code, report, _ = doctor(capsys, *fleet)
    api = by_name(report)["api"]
    assert code == 1
    assert api["status"] == "fail"
    assert "no API key" in api["detail"] and "CAPTCHAAI_KEY" in api["detail"]


@pytest.mark.usefixtures("good_key")
def test_dead_redis_fails_fast_and_names_the_address(
    capsys: pytest.CaptureFixture[str], sandbox: SandboxServer
) -> None:
    port = free_port()
    started = time.monotonic()
    code, report, output = doctor(
        capsys, "--redis-url", f"redis://:hunter22@127.0.0.1:{port}/0", "--api-base", sandbox.url
    )
    redis_check = by_name(report)["redis"]
    assert code == 1
    assert redis_check["status"] == "fail"
    assert f"127.0.0.1:{port}/0: cannot connect" in redis_check["detail"]
    assert "hunter22" not in output
    assert by_name(report)["api"]["status"] == "ok"
    assert time.monotonic() - started < 10


@pytest.mark.usefixtures("good_key")
def test_unreachable_host_fails_with_its_address(
    capsys: pytest.CaptureFixture[str], fleet: list[str], tmp_path: Path
) -> None:
    inventory = closed_port_inventory(tmp_path)
    code, report, _ = doctor(capsys, *fleet, "--inventory", str(inventory), "--timeout", "2")
    checks = by_name(report)
    assert code == 1
    assert checks["inventory"]["status"] == "ok"
    host = checks["ssh w1"]
    assert host["status"] == "fail"
    assert "127.0.0.1:" in host["detail"] and "connection refused" in host["detail"]
    assert host["data"]["target"].startswith("deploy@127.0.0.1:")


def test_config_error_exits_2_naming_the_field(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "fleet.yml"
    config.write_text("worker:\n  max_slots: many\n", encoding="utf-8")
    code, report, _ = doctor(capsys, "--config", str(config))
    assert code == 2
    check = by_name(report)["config"]
    assert check["status"] == "fail"
    assert "worker.max_slots" in check["detail"]


def test_controller_section_is_checked_too(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "fleet.yml"
    config.write_text("controller:\n  slots_per_service: 0\n", encoding="utf-8")
    code, report, _ = doctor(capsys, "--config", str(config))
    assert code == 2
    assert "controller.slots_per_service" in by_name(report)["config"]["detail"]


def test_missing_config_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, report, _ = doctor(capsys, "--config", str(tmp_path / "nope.yml"))
    assert code == 2
    assert "nope.yml" in by_name(report)["config"]["detail"]


def test_broken_inventory_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts: [a, b]\n", encoding="utf-8")
    code, report, _ = doctor(capsys, "--inventory", str(inventory))
    assert code == 2
    detail = by_name(report)["inventory"]["detail"]
    assert str(inventory) in detail and 'Invalid "hosts" entry for "all" group' in detail  # Ansible's words


@pytest.mark.usefixtures("good_key")
def test_low_balance_warns_without_failing(
    capsys: pytest.CaptureFixture[str], fleet: list[str], tmp_path: Path
) -> None:
    config = tmp_path / "fleet.yml"
    config.write_text("controller:\n  balance_floor: 100\n", encoding="utf-8")
    code, report, _ = doctor(capsys, "--config", str(config), *fleet)
    api = by_name(report)["api"]
    assert code == 0
    assert api["status"] == "warn"
    assert "below controller.balance_floor" in api["detail"]
