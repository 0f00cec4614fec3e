"""``captcha-fleet status``: one screen for the whole fleet, or JSON for scripts."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from captcha_fleet.contract.common_cli import add_subcommand, print_json

# A screen's worth: the summary counts every entry, so a registry of 10,000 workers prints in a moment.
DEFAULT_LIMIT = 50


HELP = "show queue, workers and the controller's last decisions"
DESCRIPTION = (
    "Read the fleet's state from Redis: queue depth, in-flight tasks, every worker's "
    "heartbeat, and the controller's last decisions."
)


def register(subparsers: Any) -> None:
    """Add the ``status`` subcommand."""
    parser = add_subcommand(subparsers, "status", run, HELP, DESCRIPTION, common=True)
    parser.add_argument("--watch", action="store_true", help="refresh until interrupted")
    parser.add_argument("--interval", type=float, default=1.0, help="refresh interval for --watch (seconds)")
    parser.add_argument("--decisions", type=int, default=10, help="how many recent decisions to show")
    parser.add_argument(
        "--limit",
        type=_count,
        default=DEFAULT_LIMIT,
        help=f"list at most this many workers and hosts; every one is counted in the summary (default "
        f"{DEFAULT_LIMIT}; 0 = all)",
    )
    parser.add_argument("--page", type=_page, default=1, help="which page of --limit entries to list (from 1)")


def _count(text: str) -> int:
    """A count >= 0 for ``--limit``."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("expected 0 (all) or a positive count")
    return value


def _page(text: str) -> int:
    """A page number >= 1 for ``--page``."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("pages count from 1")
    return value


def run(args: argparse.Namespace) -> int:
    """Print the state once, or keep refreshing with ``--watch``."""
    import redis
    from rich.console import Console
    from rich.live import Live

    from captcha_fleet.apps.status.fleet_state import FleetState, read_fleet_state
    from captcha_fleet.apps.status.view import render
    from captcha_fleet.contract.common_cli import config_from_args, redis_client
    from captcha_fleet.controller.settings import settings_from_config

    config = config_from_args(args)
    client = redis_client(config)
    # The controller's own settings from the same fleet.yml (its defaults without one): the same thresholds.
    settings = settings_from_config(config)
    limit = args.limit or None  # 0: everything

    def read() -> FleetState:
        return read_fleet_state(client, config.keys, args.decisions, settings, limit=limit, page=args.page)

    try:
        state = read()
    except redis.RedisError as exc:
        print(f"captcha-fleet status: cannot read Redis: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json(state.to_dict())
        return 0
    console = Console()
    if not args.watch:
        console.print(render(state))
        return 0
    with Live(render(state), console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(args.interval)
            live.update(render(read()))
