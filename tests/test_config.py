"""fleet.yml + environment + flags, with errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from captcha_fleet.apps.cli import main
from captcha_fleet.contract.config import DEFAULT_API_BASE, ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    config = load_config(None, env={})
    assert config.api.base == DEFAULT_API_BASE
    assert config.api.first_poll_delay("userrecaptcha") == 15.0
    assert config.api.first_poll_delay("base64") == 5.0
    assert config.keys.tasks == "captcha:tasks" and config.keys.results == "captcha:results"


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "redis_url: redis://file:1/0\nkey_prefix: filep\napi:\n  poll_interval_s: 3\n")
    env = {"REDIS_URL": "redis://env:2/0", "CAPTCHAAI_BASE": "http://127.0.0.1:9", "CAPTCHAAI_KEY": "k"}
    config = load_config(path, env=env)
    assert config.redis_url == "redis://env:2/0" and config.api.base == "http://127.0.0.1:9"
    assert config.api.poll_interval_s == 3.0 and config.key_prefix == "filep"
    flagged = load_config(path, env=env, overrides={"redis_url": "redis://flag:3/0", "key_prefix": "flagp"})
    assert flagged.redis_url == "redis://flag:3/0" and flagged.key_prefix == "flagp"


def test_per_method_first_poll_delays_merge_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "api:\n  first_poll_delay_s:\n    turnstile: 8\n"), env={})
    assert config.api.first_poll_delay("turnstile") == 8.0
    assert config.api.first_poll_delay("base64") == 5.0


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("worker:\n  slots: 3\n", "worker.slots"),
        ("worker:\n  max_slots: lots\n", "worker.max_slots"),
        ("worker:\n  min_slots: 10\n  max_slots: 5\n", "worker.min_slots"),
        ("api:\n  poll_interval_s: -1\n", "api.poll_interval_s"),
        ("api:\n  first_poll_delay_s:\n    base64: soon\n", "api.first_poll_delay_s.base64"),
        ("results: [1]\n", "results"),
        ("key_prefix: 'a b'\n", "key_prefix"),
        ("- just a list\n", "top level"),
        ("api: {base: ftp://x}\n", "api.base"),
        ("api:\n  requests_per_task: 0.9\n", "api.requests_per_task"),
    ],
)
def test_invalid_settings_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(write(tmp_path, text), env={})


def test_cli_reports_a_config_error_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "worker:\n  bogus: 1\n")
    assert main(["status", "--config", str(path)]) == 2
    assert "worker.bogus" in capsys.readouterr().err


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("worker", "submit", "sandbox", "status", "demo"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        assert command in capsys.readouterr().out


PASSWORD_TAIL = "zq9Tail"


@pytest.mark.parametrize("command", ["status", "worker", "submit", "doctor"])
def test_a_redis_password_with_unencoded_url_characters_gets_a_clear_error(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = {"submit": ["submit", "base64", "body=aGk="]}.get(command, [command])
    for char in "/#?":
        password = f"pw{char}{PASSWORD_TAIL}"
        monkeypatch.setenv("REDIS_URL", f"redis://:{password}@127.0.0.1:6390/0")
        code = main(args)
        out, err = capsys.readouterr()
        assert code != 0, (command, char)
        assert "percent-encode" in out + err, (command, char, out, err)
        assert PASSWORD_TAIL not in out + err and password not in out + err
        assert "Traceback" not in out + err


def test_a_well_formed_redis_url_with_an_encoded_password_is_accepted() -> None:
    config = load_config(None, env={"REDIS_URL": "redis://:pw%2F%23%3Fx@127.0.0.1:6390/2"})
    assert config.redis_url.endswith("@127.0.0.1:6390/2")
    for bad in ("redis://:a/b@h:1/0", "redis://:a#b@h/0", "redis://:a?b@h/0", "redis://h:1/x", "http://h/0"):
        with pytest.raises(ConfigError) as info:
            load_config(None, env={"REDIS_URL": bad})
        assert "b@h" not in str(info.value) and bad not in str(info.value)
