"""Helpers shared by subcommands: turning parsed flags into a loaded config and a Redis client."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import redis

from captcha_fleet.config import FleetConfig, load_config
from captcha_fleet.redis_connect import connect


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options every subcommand that touches the fleet shares: config file, Redis, prefix, output."""
    parser.add_argument("--config", "-c", metavar="FILE", help="fleet.yml (default: built-in defaults)")
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis URL (overrides fleet.yml and REDIS_URL; prefer REDIS_URL for passwords)",
    )
    parser.add_argument("--key-prefix", metavar="PREFIX", help="Redis key prefix (default: captcha)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


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


def redis_client(config: FleetConfig) -> redis.Redis:
    """A Redis client for the fleet's URL (plain, TLS or Sentinel) with bounded timeouts (bytes, not decoded)."""
    return connect(config, socket_timeout=None)


def emit(args: argparse.Namespace, payload: Any, human: str) -> None:
    """Print JSON under ``--json``, else the human text."""
    if getattr(args, "json", False):
        json.dump(payload, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(human)
