#!/usr/bin/env python3
"""The host's worker instances as they are when this runs: restart them, or rewrite their program file.

site.yml runs this through ``fleet_helper.py restart -- ...``, so under the host's lock (the controller's scale runs,
rolling_update.yml and decommission.yml take the same one) and drained. The controller owns which instances run on
a provisioned host: whatever instance set site.yml read at play start may be stale by the time its handlers run
(``captcha-worker-10: ERROR (no such process)``), so the set is read here, under the lock, and never passed in.

- ``restart``: restart every worker program supervisord has now (or every ``<service>@*.service`` unit systemd runs).
- ``apply``: render the program file from a prototype (the role's template rendered for one placeholder instance)
  for the instances in the program file now (or ``--instances``), write it when it differs and apply it as
  ``supervisorctl update`` does. ``--check`` only says whether it would change the file (read without the lock: it
  decides whether a handler is notified, the handler reads again).

Prints one JSON line; exits 1 when something failed. Standard library only (the host's Python runs it), beside
``supervisor_apply.py``, whose socket client and update it uses.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import xmlrpc.client
from pathlib import Path
from typing import Any

import supervisor_apply

# The instance name the role renders the prototype with (roles/worker/tasks/services_supervisord.yml).
PLACEHOLDER = "@worker_instance@"
# supervisord's fault codes (supervisor.xmlrpc.Faults): the program is gone, or not running.
FAULT_BAD_NAME = 10
FAULT_NOT_RUNNING = 70
# systemd active states of a unit that is not meant to run (the controller stopped it).
IDLE_UNIT_STATES = {"inactive", "deactivating"}


def instances_in(text: str, service_name: str) -> list[str]:
    """The instance names of a program file, in file order."""
    return re.findall(rf"(?m)^\[program:{re.escape(service_name)}-([^\]]+)\]", text)


def render(prototype: str, instances: list[str]) -> str:
    """The program file for ``instances``: the prototype's header, then its one program block per instance.

    The prototype is the template rendered for ``[PLACEHOLDER]``, so this equals the template rendered for
    ``instances`` (what the controller's scale run writes): a run that changes nothing writes nothing.
    """
    if not prototype.endswith("\n"):  # a template lookup drops the last newline; supervisor_apply.py adds it back
        prototype += "\n"
    start = prototype.find("\n[program:")
    if start < 0 or PLACEHOLDER not in prototype[start:] or PLACEHOLDER in prototype[:start]:
        raise ValueError(f"the prototype has no program block for {PLACEHOLDER}")
    header, block = prototype[:start], prototype[start:]
    return header + "".join(block.replace(PLACEHOLDER, name) for name in instances)


def cmd_apply(args: argparse.Namespace) -> dict[str, Any]:
    prototype = Path(args.prototype).read_text(encoding="utf-8")
    try:
        current = Path(args.file).read_text(encoding="utf-8")
    except FileNotFoundError:
        current = ""
    instances = [i for i in args.instances.split(",") if i] if args.instances is not None else None
    if instances is None:
        instances = instances_in(current, args.service_name)
    content = render(prototype, instances)
    changed = content != current
    if args.check:
        return {"changed": changed, "instances": instances}
    if changed:
        supervisor_apply.write(Path(args.file), content)
    supervisor = supervisor_apply.connect(Path(args.config))
    # always: an earlier run may have written the file and failed to apply it (the owed mark brings us here)
    lines, ok = supervisor_apply.update(supervisor)
    return {"changed": changed or bool(lines), "instances": instances, "failed": not ok, "output": "\n".join(lines)}


def cmd_restart(args: argparse.Namespace) -> dict[str, Any]:
    if args.service_manager == "systemd":
        return restart_systemd(args.service_name)
    return restart_supervisord(Path(args.config), args.service_name)


def restart_supervisord(config: Path, service_name: str) -> dict[str, Any]:
    """Stop and start each worker program supervisord has now (each a group of one process)."""
    supervisor = supervisor_apply.connect(config)
    names = sorted(
        f"{p['group']}:{p['name']}" for p in supervisor.getAllProcessInfo() if p["group"].startswith(f"{service_name}-")
    )
    restarted: list[str] = []
    failed: dict[str, str] = {}
    for name in names:
        program = name.partition(":")[2]
        try:
            try:
                supervisor.stopProcess(name, True)
            except xmlrpc.client.Fault as fault:
                if fault.faultCode == FAULT_BAD_NAME:
                    continue  # removed meanwhile (not under the lock?): nothing to restart
                if fault.faultCode != FAULT_NOT_RUNNING:
                    raise
            supervisor.startProcess(name, True)  # waits startsecs: a program that cannot start is a Fault
            restarted.append(program)
        except xmlrpc.client.Fault as fault:  # say which, and go on with the others
            failed[program] = fault.faultString
    answer: dict[str, Any] = {"restarted": restarted}
    if failed:
        answer.update(failed=True, error=f"could not restart: {failed}")
    return answer


def restart_systemd(service_name: str) -> dict[str, Any]:
    """Restart each ``<service>@*.service`` unit that is meant to run now (active, starting or failed)."""
    listed = subprocess.run(
        ["systemctl", "list-units", f"{service_name}@*.service", "--all", "--plain", "--no-legend", "--no-pager"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    units = [
        fields[0]
        for fields in (line.split() for line in listed.stdout.splitlines())
        if len(fields) >= 3 and fields[1] == "loaded" and fields[2] not in IDLE_UNIT_STATES
    ]
    if units:
        subprocess.run(["systemctl", "restart", *units], capture_output=True, text=True, check=True, timeout=900)
    return {"restarted": units}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service-name", default="captcha-worker", help="program prefix / unit template name")
    parser.add_argument("--config", default="", help="supervisord.conf of the private supervisord")
    sub = parser.add_subparsers(dest="command", required=True)
    restart = sub.add_parser("restart", help="restart the worker instances that run now")
    restart.add_argument("--service-manager", choices=["supervisord", "systemd"], default="supervisord")
    restart.set_defaults(func=cmd_restart)
    apply = sub.add_parser("apply", help="rewrite the program file for the instances it has now, and apply it")
    apply.add_argument("--file", required=True, help="the supervisord program file")
    apply.add_argument("--prototype", required=True, help="the program file rendered for one placeholder instance")
    apply.add_argument("--instances", default=None, help="comma-separated instances instead of the file's own")
    apply.add_argument("--check", action="store_true", help="change nothing: say whether the file would change")
    apply.set_defaults(func=cmd_apply)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        answer = args.func(args)
    except (OSError, ValueError, xmlrpc.client.Error, subprocess.SubprocessError) as exc:
        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else ""
        print(json.dumps({"failed": True, "error": f"{type(exc).__name__}: {exc} {detail or ''}".strip()[-800:]}))
        return 1
    print(json.dumps(answer))
    return 1 if answer.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
