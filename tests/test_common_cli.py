"""The options and output helpers every subcommand shares (captcha_fleet.contract.common_cli)."""

from __future__ import annotations

import argparse
import json

import pytest

from captcha_fleet.contract.common_cli import add_api_base_option, add_common_options, config_from_args, print_json


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
