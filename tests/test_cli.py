"""The ``captcha-fleet`` entry point: every subcommand reachable, and a service's start-up kept light."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from captcha_fleet.apps.cli import SUBCOMMAND_MODULES, build_parser


def test_each_subcommand_is_registered_by_the_module_named_for_it() -> None:
    for name, module in SUBCOMMAND_MODULES.items():
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(subparsers)
        assert list(subparsers.choices) == [name], module


def test_top_level_help_lists_every_subcommand() -> None:
    help_text = build_parser().format_help()
    for name in SUBCOMMAND_MODULES:
        assert name in help_text


def test_starting_a_worker_loads_no_simulator_sandbox_or_doctor() -> None:
    """A scale decision waits for the new worker's start-up: it imports only what a worker runs."""
    code = (
        "import sys\n"
        "from captcha_fleet.apps.cli import build_parser\n"
        "build_parser(['worker']).parse_args(['worker', '--slots', '1'])\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "captcha_fleet.worker.cli" in loaded
    heavy = [
        "captcha_fleet.controller.sim",
        "captcha_fleet.apps.sandbox",
        "captcha_fleet.apps.doctor.cli",
        "captcha_fleet.apps.replay.cli",
    ]
    assert not [m for m in loaded if any(m == h or m.startswith(h + ".") for h in heavy)]


def test_options_before_the_subcommand_still_parse() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "captcha_fleet.apps.cli", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stdout.startswith("captcha-fleet ")


def test_the_command_clients_reads_time_out_and_only_a_blocking_wait_has_none() -> None:
    """The controller and status read through this client: a connection lost mid-read (a host cut off the
    network) must fail within the timeout and reconnect, not hang on TCP's back-off; submit --wait blocks in BLPOP
    for up to 30 s, so it asks for no read timeout."""
    from captcha_fleet.contract.common_cli import COMMAND_TIMEOUT_S, redis_client
    from captcha_fleet.contract.config import load_config

    config = load_config(None, env={}, overrides={"redis_url": "redis://127.0.0.1:1/0"})
    assert redis_client(config).connection_pool.connection_kwargs["socket_timeout"] == COMMAND_TIMEOUT_S
    assert COMMAND_TIMEOUT_S <= 15
    assert redis_client(config, blocking=True).connection_pool.connection_kwargs["socket_timeout"] is None
