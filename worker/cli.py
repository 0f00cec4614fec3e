"""``captcha-fleet worker``: run one worker service until SIGTERM, then drain."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

HELP = "run a worker service (claims tasks, solves them, writes results)"
DESCRIPTION = (
    "Run one worker service. SIGTERM drains: stop claiming, finish in-flight solves up to "
    "worker.drain_timeout_s, return the rest to the queue, exit 0. The API key comes only from "
    "CAPTCHAAI_KEY or api.key_file."
)


def register(subparsers: Any) -> None:
    """Add the ``worker`` subcommand."""
    from captcha_fleet.contract.common_cli import add_subcommand

    parser = add_subcommand(subparsers, "worker", run, HELP, DESCRIPTION, common=True, api_base=True)
    parser.add_argument("--host-name", metavar="NAME", help="host name in the worker id (default: hostname)")
    parser.add_argument("--instance", metavar="NAME", help="instance name in the worker id (default: pid)")
    parser.add_argument("--slots", type=int, metavar="N", help="fixed slot count; ignores the controller")
    parser.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus /metrics on PORT")


def run(args: argparse.Namespace) -> int:
    """Start the service and block until it has drained."""
    from captcha_fleet.contract.common_cli import config_from_args

    from .service import WorkerService

    config = config_from_args(args)
    if args.metrics_port is not None:
        config = dataclasses.replace(config, worker=dataclasses.replace(config.worker, metrics_port=args.metrics_port))
    service = WorkerService(config, host=args.host_name, instance=args.instance, slots=args.slots)
    service.install_signal_handlers()
    return service.run()
