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

from captcha_fleet import __version__
from captcha_fleet.contract import log_redaction
from captcha_fleet.contract.common_cli import add_common_options
from captcha_fleet.contract.config import ConfigError

# subcommand -> the module that registers it, in the order --help lists them
SUBCOMMAND_MODULES: dict[str, str] = {
    "worker": "captcha_fleet.worker.cli",
    "submit": "captcha_fleet.apps.submit",
    "sandbox": "captcha_fleet.apps.sandbox.cli",
    "controller": "captcha_fleet.controller.cli",
    "sim": "captcha_fleet.controller.sim.cli",
    "demo": "captcha_fleet.apps.demo",
    "replay": "captcha_fleet.apps.replay.cli",
    "status": "captcha_fleet.apps.status.cli",
    "doctor": "captcha_fleet.apps.doctor.cli",
    "export": "captcha_fleet.apps.export.cli",
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand registered, or only the one ``argv`` runs: a worker that a scale
    decision starts then imports no simulator, sandbox or doctor (45 ms of its start-up)."""
    parser = argparse.ArgumentParser(
        prog="captcha-fleet",
        description="An auto-scaling fleet of CAPTCHA-solving workers on a reliable Redis queue.",
    )
    parser.add_argument("--version", action="version", version=f"captcha-fleet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _modules_for(argv):
        importlib.import_module(module_name).register(subparsers)
    return parser


def _modules_for(argv: Sequence[str] | None) -> list[str]:
    """Every subcommand's module, unless the first argument names one (options before it would need them all)."""
    if argv and argv[0] in SUBCOMMAND_MODULES:
        return [SUBCOMMAND_MODULES[argv[0]]]
    return list(SUBCOMMAND_MODULES.values())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
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
