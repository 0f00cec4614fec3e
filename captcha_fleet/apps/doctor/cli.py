"""``captcha-fleet doctor``: a preflight a new operator runs before the first deploy, and again when in doubt.

It checks, in seconds and in parallel, what a deploy would otherwise discover one failure at a time: the
configuration, Redis (reachable and writable), the API key (by reading the balance), and every inventory host
over SSH (Python version, free disk). Exit code 0: all good; 1: a check failed; 2: the configuration or the
inventory cannot be read.
"""

from __future__ import annotations

import argparse
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from captcha_fleet.apps.doctor.checks import CheckResult, Status
from captcha_fleet.contract.common_cli import add_subcommand, print_json

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


HELP = "preflight: config, Redis, API key and every inventory host"
DESCRIPTION = (
    "Check the configuration, that Redis is reachable and writable, that the API key is accepted "
    "(the balance is read; the key is never printed), and that every inventory host answers over SSH "
    "with a recent Python and free disk. Exit 0 when all pass, 1 when a check fails, 2 on a config error."
)


def register(subparsers: Any) -> None:
    """Add the ``doctor`` subcommand."""
    parser = add_subcommand(subparsers, "doctor", run, HELP, DESCRIPTION, common=True, api_base=True)
    parser.add_argument(
        "--inventory",
        "-i",
        metavar="SOURCE",
        action="append",
        help="inventory whose hosts to check, anything ansible-playbook -i accepts (file, directory, script, "
        "plugin config, 'h1,h2,'); repeat for several sources",
    )
    parser.add_argument("--limit", "-l", metavar="PATTERN", help="only hosts matching this Ansible host pattern")
    parser.add_argument(
        "--vault-password-file", metavar="PATH", help="decrypt vault-encrypted inventory variables with this file"
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per Redis / API / SSH step (default 3)")
    parser.add_argument("--min-free-mb", type=int, default=1024, help="free disk wanted on / (default 1024)")
    parser.add_argument("--min-python", default="3.11", help="Python wanted on the hosts (default 3.11)")


def run(args: argparse.Namespace) -> int:
    """Run every check, print the report, return the exit code."""
    from captcha_fleet.contract.common_cli import config_from_args
    from captcha_fleet.contract.config import ConfigError
    from captcha_fleet.contract.inventory import InventoryError, read_inventory

    # urllib3 logs a retried URL, and CaptchaAI's GET URLs carry the key in the query string.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    results: list[CheckResult] = []
    try:
        min_python = _parse_version(args.min_python)
        config = config_from_args(args)
        floor = _balance_floor(config)
    except (ConfigError, OSError) as exc:
        results.append(CheckResult("config", Status.FAIL, _config_message(exc)))
        _print(args, results)
        return EXIT_CONFIG
    results.append(CheckResult("config", Status.OK, args.config or "built-in defaults + environment"))

    hosts = None
    if args.inventory:
        try:
            inventory = read_inventory(args.inventory, vault_password_file=args.vault_password_file, limit=args.limit)
        except InventoryError as exc:
            results.append(CheckResult("inventory", Status.FAIL, str(exc)))
            _print(args, results)
            return EXIT_CONFIG
        hosts = list(inventory.hosts)
        results.append(inventory_result(inventory))

    results.extend(_run_checks(config, hosts, args.timeout, floor, min_python, args.min_free_mb * 1024))
    _print(args, results)
    return EXIT_FAILED if any(r.status is Status.FAIL for r in results) else EXIT_OK


def _run_checks(
    config: Any,
    hosts: list[Any] | None,
    timeout_s: float,
    balance_floor: float | None,
    min_python: tuple[int, int],
    min_free_kb: int,
) -> list[CheckResult]:
    """Redis, the API and every host at once: the slowest check, not their sum, bounds doctor's time."""
    from captcha_fleet.apps.doctor.checks import check_api, check_redis, host_result, local_host_result
    from captcha_fleet.apps.doctor.redis_checks import check_acl_user, check_sentinels, check_tls
    from captcha_fleet.apps.doctor.ssh_probe import probe_host

    with ThreadPoolExecutor(max_workers=34, thread_name_prefix="doctor") as pool:
        futures: list[Future[CheckResult]] = [
            pool.submit(check_redis, config, timeout_s),
            pool.submit(check_sentinels, config, timeout_s),
            pool.submit(check_acl_user, config, timeout_s),
            pool.submit(check_tls, config, timeout_s),
            pool.submit(check_api, config, timeout_s, balance_floor),
        ]
        if hosts is None:
            futures.append(_done(CheckResult("hosts", Status.SKIP, "no --inventory given")))
        elif not hosts:
            futures.append(_done(CheckResult("hosts", Status.FAIL, "the inventory (with --limit) names no host")))
        for host in hosts or []:
            if host.connection != "ssh":
                futures.append(_done(local_host_result(host)))
            else:
                futures.append(
                    pool.submit(lambda h: host_result(probe_host(h, timeout_s), min_python, min_free_kb), host)
                )
        return [future.result() for future in futures]


def inventory_result(inventory: Any) -> CheckResult:
    """What Ansible found: the hosts (their names in ``data``, for scripts) and how many groups."""
    names = inventory.names()
    groups = sorted(g for g in inventory.groups if g not in ("all", "ungrouped"))
    detail = f"{inventory.source}: {len(names)} host(s) in {len(groups)} group(s), read by ansible-inventory"
    return CheckResult("inventory", Status.OK, detail, {"hosts": names, "groups": groups})


def _done(result: CheckResult) -> Future[CheckResult]:
    future: Future[CheckResult] = Future()
    future.set_result(result)
    return future


def _balance_floor(config: Any) -> float | None:
    """``controller.balance_floor``, checking the whole controller section on the way (it is config too)."""
    try:
        from captcha_fleet.controller.settings import settings_from_config
    except ImportError:  # pragma: no cover - the controller package ships with the CLI
        return None
    return float(settings_from_config(config).balance_floor)


def _parse_version(text: str) -> tuple[int, int]:
    from captcha_fleet.contract.config import ConfigError

    try:
        major, minor = (int(part) for part in text.split(".")[:2])
    except ValueError:
        raise ConfigError(f"--min-python: expected MAJOR.MINOR, got {text!r}") from None
    return major, minor


def _config_message(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot read {exc.filename or 'the config file'}: {exc.strerror or exc}"
    return str(exc)


def _print(args: argparse.Namespace, results: list[CheckResult]) -> None:
    failed = any(r.status is Status.FAIL for r in results)
    if args.json:
        payload = {"ok": not failed, "checks": [r.to_dict() for r in results]}
        print_json(payload)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    styles = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red", Status.SKIP: "dim"}
    table = Table(title="captcha-fleet doctor", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for result in results:
        table.add_row(result.name, Text(result.status.value, style=styles[result.status]), Text(result.detail))
    console = Console()
    console.print(table)
    console.print("[bold red]some checks failed[/]" if failed else "[green]all checks passed[/]")
