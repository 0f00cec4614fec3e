"""captcha-fleet: an auto-scaling fleet of CAPTCHA-solving workers on a reliable Redis queue.

Each subcommand lives in its own module, which exposes ``register(subparsers)``: it adds its parser and
sets ``func`` to a callable ``(args) -> int`` (the exit code). Heavy imports happen inside ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from captcha_fleet import __version__, log_redaction
from captcha_fleet.common_cli import add_common_options
from captcha_fleet.config import ConfigError

# (subcommand module, in the order --help lists them)
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "captcha_fleet.worker.cli",
    "captcha_fleet.submit_cli",
    "captcha_fleet.sandbox.cli",
    "captcha_fleet.controller.cli",
    "captcha_fleet.controller.sim.cli",
    "captcha_fleet.demo",
    "captcha_fleet.replay",
    "captcha_fleet.status_cli",
    "captcha_fleet.doctor",
    "captcha_fleet.export_cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="captcha-fleet",
        description="An auto-scaling fleet of CAPTCHA-solving workers on a reliable Redis queue.",
    )
    parser.add_argument("--version", action="version", version=f"captcha-fleet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log_redaction.install()
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"captcha-fleet: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["add_common_options", "build_parser", "main"]
