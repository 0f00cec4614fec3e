"""Helpers shared by subcommands: turning parsed flags into a loaded config and a Redis client."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import redis

from captcha_fleet.contract.config import FleetConfig, load_config
from captcha_fleet.contract.redis_connect import connect

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_subcommand(
    subparsers: Any,
    name: str,
    run: Callable[[argparse.Namespace], int],
    help: str,
    description: str | None = None,
    *,
    epilog: str | None = None,
    common: bool = False,
    api_base: bool | str = False,
) -> argparse.ArgumentParser:
    """Add subcommand ``name`` whose ``func`` is ``run``, so each module declares only the options that are its own
    (``help`` in the top-level list, ``description`` in its own ``--help``).

    ``common`` adds :func:`add_common_options`; ``api_base`` adds ``--api-base`` (a string says what it is for).
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help, description=description, epilog=epilog)
    if common:
        add_common_options(parser)
    if api_base is not False:
        add_api_base_option(parser, "" if api_base is True else api_base)
    parser.set_defaults(func=run)
    return parser


def add_config_option(parser: argparse.ArgumentParser, help: str = "fleet.yml (default: built-in defaults)") -> None:
    """``--config``/``-c``: the fleet.yml a subcommand reads (``help`` says which part of it)."""
    parser.add_argument("--config", "-c", metavar="FILE", help=help)


def add_key_prefix_option(parser: argparse.ArgumentParser, help: str = "Redis key prefix (default: captcha)") -> None:
    """``--key-prefix``: whose keys to read and write (read by :func:`config_from_args`)."""
    parser.add_argument("--key-prefix", metavar="PREFIX", help=help)


def add_json_option(parser: argparse.ArgumentParser, help: str = "machine-readable output") -> None:
    """``--json``: what :func:`emit` and :func:`print_json` print instead of text."""
    parser.add_argument("--json", action="store_true", help=help)


def add_log_level_option(parser: argparse.ArgumentParser, default: str = "INFO") -> None:
    """``--log-level``, which the top-level CLI hands to logging before it runs the subcommand."""
    parser.add_argument("--log-level", default=default, choices=LOG_LEVELS)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options every subcommand that touches the fleet shares: config file, Redis, prefix, output."""
    add_config_option(parser)
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis URL (overrides fleet.yml and REDIS_URL; prefer REDIS_URL for passwords)",
    )
    add_key_prefix_option(parser)
    add_json_option(parser)
    add_log_level_option(parser)


def add_api_base_option(parser: argparse.ArgumentParser, purpose: str = "") -> None:
    """``--api-base``, for the subcommands that talk to the CaptchaAI API (read by :func:`config_from_args`)."""
    what = f"API base URL{' for ' + purpose if purpose else ''}"
    parser.add_argument("--api-base", metavar="URL", help=f"{what} (overrides CAPTCHAAI_BASE)")


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    """Load fleet.yml and the environment, with the common flags on top."""
    overrides: dict[str, Any] = {}
    if getattr(args, "redis_url", None):
        overrides["redis_url"] = args.redis_url
    if getattr(args, "key_prefix", None):
        overrides["key_prefix"] = args.key_prefix
    if getattr(args, "api_base", None):
        overrides["api_base"] = args.api_base
    return load_config(getattr(args, "config", None), overrides=overrides)


# A read that gets no answer in this long has lost its connection (a host cut off the network): the client
# reconnects instead of waiting on TCP's retransmission back-off, which grows past a minute while the cut lasts.
COMMAND_TIMEOUT_S = 10.0


def redis_client(config: FleetConfig, blocking: bool = False) -> redis.Redis:
    """A Redis client for the fleet's URL (plain, TLS or Sentinel), bytes not decoded. Reads time out after
    :data:`COMMAND_TIMEOUT_S` unless ``blocking`` (a caller of blocking commands, whose own timeout bounds them)."""
    return connect(config, socket_timeout=None if blocking else COMMAND_TIMEOUT_S)


def print_json(payload: Any, flush: bool = False) -> None:
    """One JSON object on a line of its own, keys sorted: what every ``--json`` prints (``flush`` for event lines)."""
    json.dump(payload, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    if flush:
        sys.stdout.flush()


def emit(args: argparse.Namespace, payload: Any, human: str) -> None:
    """Print JSON under ``--json``, else the human text."""
    if getattr(args, "json", False):
        print_json(payload)
    else:
        print(human)
