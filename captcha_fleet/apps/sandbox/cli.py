"""``captcha-fleet sandbox``: run the CaptchaAI-compatible sandbox until SIGTERM or SIGINT.

It needs no Redis, so it has its own flags rather than the fleet's common ones. ``--port 0`` picks a free
port; ``--port-file`` tells a supervising script which one, written atomically once the socket listens.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from captcha_fleet.apps.sandbox.config import SandboxConfig, parse_sandbox_config
from captcha_fleet.apps.sandbox.server import SandboxServer
from captcha_fleet.contract.common_cli import add_config_option, print_json
from captcha_fleet.contract.config import load_config
from captcha_fleet.contract.provider_profiles import DEFAULT_PROFILE, PROFILES


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sandbox`` subcommand."""
    parser = subparsers.add_parser(
        "sandbox",
        help="run a local CaptchaAI-compatible API (for the demo, tests and benchmarks)",
        description=__doc__,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: 0 = a free port)")
    add_config_option(parser, "fleet.yml; its `sandbox:` section is used")
    parser.add_argument("--port-file", metavar="PATH", help="write the bound port here once listening")
    parser.add_argument("--time-scale", type=float, help="1.0 = real time; 0.01 makes a 15 s solve take 0.15 s")
    parser.add_argument("--threads", type=int, help="the plan's concurrent solves (default: unlimited)")
    parser.add_argument("--seed", type=int, help="seed for solve times, unsolvable draws and faults")
    parser.add_argument(
        "--provider",
        metavar="NAME",
        help=f"act out a provider profile ({', '.join(PROFILES)}; default: {DEFAULT_PROFILE}); "
        "the config's sandbox: section and the flags go on top",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """The ``sandbox:`` section of ``--config`` (if any) with the flags on top."""
    section: dict[str, Any] = {}
    if args.config:
        section = dict(load_config(args.config).section("sandbox"))
    for flag, name in (("time_scale", "time_scale"), ("threads", "threads"), ("seed", "seed")):
        value = getattr(args, flag, None)
        if value is not None:
            section[name] = value
    provider = getattr(args, "provider", None)
    if provider is None:
        return parse_sandbox_config(section)
    # The profile's stalls are scaled by the time scale the sandbox will run at, so it is read first.
    scale = parse_sandbox_config({"time_scale": section.get("time_scale", 1.0)}).time_scale
    return parse_sandbox_config(section, base=SandboxConfig.from_profile(provider, time_scale=scale))


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT, then stop cleanly and exit 0."""
    config = config_from_args(args)
    server = SandboxServer(config, host=args.host, port=args.port)
    try:
        server.start()
    except OSError as exc:
        print(
            f"captcha-fleet sandbox: cannot listen on {args.host}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    port_file = Path(args.port_file) if args.port_file else None
    try:
        if port_file is not None:
            _write_atomically(port_file, f"{server.port}\n")
        if args.json:
            print_json({"event": "listening", "url": server.url, "port": server.port}, flush=True)
        else:
            print(f"sandbox listening on {server.url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
        if port_file is not None:
            port_file.unlink(missing_ok=True)
    stats = server.stats()
    if args.json:
        print_json({"event": "stopped", "stats": stats}, flush=True)
    else:
        print(
            f"sandbox stopped: {stats['accepted']} accepted, {stats['solved']} solved, "
            f"{stats['requests_total']} requests",
            flush=True,
        )
    return 0


def _write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a watcher never reads half a port number."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
