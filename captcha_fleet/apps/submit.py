"""``captcha-fleet submit``: queue a task (and optionally wait for its result) from the shell."""

from __future__ import annotations

import argparse
from typing import Any

from captcha_fleet.contract.common_cli import add_subcommand, print_json

# Exit status when the task is queued on the primary but fewer replicas than redis.wait_replicas confirmed it.
NOT_REPLICATED = 4


HELP = "queue a CAPTCHA task, optionally wait for its result"
DESCRIPTION = (
    "Queue one task in the seed's wire format. Parameters are given as NAME=VALUE pairs "
    "(e.g. googlekey=... pageurl=...). With --wait, block until the result arrives."
)


def register(subparsers: Any) -> None:
    """Add the ``submit`` subcommand."""
    parser = add_subcommand(subparsers, "submit", run, HELP, DESCRIPTION, common=True)
    parser.add_argument("method", help="CaptchaAI method: userrecaptcha, hcaptcha, turnstile, base64, post, ...")
    parser.add_argument("params", nargs="*", metavar="NAME=VALUE", help="method parameters")
    parser.add_argument("--id", dest="task_id", help="task id (default: a random one)")
    parser.add_argument("--count", type=int, default=1, help="queue this many copies (ids get a suffix)")
    parser.add_argument("--wait", action="store_true", help="wait for the result (one task only)")
    parser.add_argument("--timeout", type=float, default=200.0, help="seconds to wait with --wait")


def parse_params(pairs: list[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``, with a clear error for a pair without ``=``."""
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"captcha-fleet submit: expected NAME=VALUE, got {pair!r}")
        params[name] = value
    return params


def run(args: argparse.Namespace) -> int:
    """Queue the task(s); print ids, or the result with ``--wait``."""
    from captcha_fleet.contract.common_cli import config_from_args, emit, redis_client
    from captcha_fleet.contract.redis_connect import Durability, NotReplicatedError
    from captcha_fleet.contract.tasks import NewTask
    from captcha_fleet.worker.producer import Producer

    config = config_from_args(args)
    # --wait blocks up to --timeout; with redis.wait_replicas, a submit counts only once the replicas hold it
    producer = Producer(redis_client(config, blocking=args.wait), config.keys, Durability.of(config))
    params = parse_params(args.params)
    if args.count < 1:
        raise SystemExit("captcha-fleet submit: --count must be at least 1")
    if args.count == 1:
        tasks = [NewTask(args.method, params, args.task_id)]
    else:
        prefix = args.task_id
        tasks = [NewTask(args.method, params, f"{prefix}-{i}" if prefix else None) for i in range(args.count)]
    try:
        ids = producer.submit_many(tasks)
    except NotReplicatedError as exc:
        # Queued on the primary only: a failover could lose it. Submitting the same --id again is safe.
        emit(args, {"status": "not-replicated", "error": str(exc)}, f"captcha-fleet submit: {exc}")
        return NOT_REPLICATED
    if not args.wait:
        emit(args, {"ids": ids}, "\n".join(ids))
        return 0
    if len(ids) != 1:
        raise SystemExit("captcha-fleet submit: --wait works with one task")
    result = producer.wait(ids[0], args.timeout)
    if result is None:
        emit(args, {"id": ids[0], "status": "timeout"}, f"{ids[0]}: no result within {args.timeout:g}s")
        return 3
    if args.json:
        print_json(result)
    else:
        shown = result.get("token") if result.get("status") == "success" else result.get("error")
        print(f"{ids[0]}: {result.get('status')}: {shown}")
    return 0 if result.get("status") == "success" else 1
