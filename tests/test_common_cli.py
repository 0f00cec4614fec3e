"""The options and output helpers every subcommand shares (captcha_fleet.contract.common_cli)."""

from __future__ import annotations

import argparse
import json

import pytest

from captcha_fleet.contract.common_cli import (
    add_api_base_option,
    add_common_options,
    add_subcommand,
    config_from_args,
    print_json,
)


def test_api_base_option_reaches_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPTCHAAI_BASE", raising=False)
    parser = argparse.ArgumentParser()
    add_common_options(parser)
    add_api_base_option(parser, "getbalance")
    assert "for getbalance" in parser.format_help()
    config = config_from_args(parser.parse_args(["--api-base", "http://127.0.0.1:9"]))
    assert config.api.base == "http://127.0.0.1:9"


def test_print_json_prints_one_sorted_line(capsys: pytest.CaptureFixture[str]) -> None:
    print_json({"b": 1, "a": [2, 3]}, flush=True)
    out = capsys.readouterr().out
    assert out == '{"a": [2, 3], "b": 1}\n'
    assert json.loads(out) == {"a": [2, 3], "b": 1}


def probe_run(args: argparse.Namespace) -> int:
    return 7


def test_a_subcommand_gets_its_run_and_the_shared_options_it_asks_for(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "CAPTCHAAI_BASE"):
        monkeypatch.delenv(name, raising=False)
    parser = argparse.ArgumentParser(prog="captcha-fleet")
    subparsers = parser.add_subparsers(dest="command", required=True)
    fleet = add_subcommand(subparsers, "probe", probe_run, "probe the fleet", "Probe it.", common=True, api_base="x")
    fleet.add_argument("--own", help="only probe's")
    add_subcommand(subparsers, "bare", probe_run, "no shared options")
    assert "probe the fleet" in parser.format_help()
    assert "Probe it." in fleet.format_help() and "API base URL for x" in fleet.format_help()

    argv = ["probe", "--redis-url", "redis://127.0.0.1:1/0", "--key-prefix", "p", "--json", "--own", "o"]
    args = parser.parse_args([*argv, "--api-base", "http://127.0.0.1:9", "--log-level", "DEBUG"])
    assert args.func(args) == 7
    assert args.json and args.own == "o" and args.log_level == "DEBUG"
    config = config_from_args(args)
    assert (config.redis_url, config.key_prefix, config.api.base) == (
        "redis://127.0.0.1:1/0",
        "p",
        "http://127.0.0.1:9",
    )

    assert parser.parse_args(["bare"]).func is probe_run
    with pytest.raises(SystemExit):
        parser.parse_args(["bare", "--json"])  # asked for no shared options: it has none
    with pytest.raises(SystemExit):
        parser.parse_args(["probe", "--log-level", "LOUD"])
