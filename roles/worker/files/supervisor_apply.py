#!/usr/bin/env python3
"""Install a supervisord program file and apply it, in one remote step (the scale fast path).

Writes the file (atomically, mode 0644) only when its content differs, then does what ``supervisorctl update``
does (starts added programs, stops removed ones, leaves the others alone), but over supervisord's XML-RPC socket
from this process: two ``supervisorctl`` processes cost 0.45 s of CPU per host, most of a scale run's remote work.
Starts the private supervisord when it is not answering. Prints ``{"changed": bool, ...}``; standard library only
(the host's Python may not be the one supervisor is installed in). With ``--check`` (Ansible's check mode) it
changes nothing and says which programs it would add and remove.

The program file comes base64-encoded in ``--programs-b64`` (scale.yml runs this through ``raw``: no module
Python on the host, 0.2 s of CPU less per host) or on stdin. With ``--service-manager auto`` it first looks
whether systemd is PID 1, and on such a host only says so (``"service_manager": "systemd"``): the caller then
runs the systemd tasks, without a ``stat`` step of its own.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import xmlrpc.client
from pathlib import Path
from typing import Any

# supervisord's fault code for a process that would not stop (supervisor.xmlrpc.Faults.FAILED)
FAULT_FAILED = 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", type=Path, required=True, help="program file to install")
    parser.add_argument("--config", type=Path, required=True, help="supervisord.conf of the private supervisord")
    parser.add_argument("--supervisord", default="/usr/bin/supervisord")
    parser.add_argument("--programs-b64", help="the program file, base64-encoded (default: read stdin)")
    parser.add_argument("--service-manager", choices=["auto", "supervisord", "systemd"], default="supervisord")
    parser.add_argument("--check", action="store_true", help="change nothing: say what would change")
    args = parser.parse_args()
    if service_manager(args.service_manager) == "systemd":
        report({"changed": False}, manager="systemd")
        return 0
    b64 = args.programs_b64
    content = sys.stdin.read() if b64 is None else base64.b64decode(b64).decode("utf-8")
    if content and not content.endswith("\n"):
        content += "\n"
    try:
        current = args.file.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    changed = current != content
    if args.check:
        before, after = programs(current or ""), programs(content)
        report({"changed": changed, "check": True, "add": sorted(after - before),
                "remove": sorted(before - after)})  # fmt: skip
        return 0
    supervisor = connect(args.config)
    if not answers(supervisor):
        if changed:
            write(args.file, content)
        start = [args.supervisord, "-c", str(args.config)]
        started = subprocess.run(start, check=False, capture_output=True, text=True)
        report({"changed": True, "started_supervisord": True, "failed": started.returncode != 0,
                "output": (started.stdout + started.stderr).strip()})  # fmt: skip
        return started.returncode
    if not changed:
        report({"changed": False})
        return 0
    write(args.file, content)
    try:
        lines, ok = update(supervisor)
    except (xmlrpc.client.Fault, OSError) as exc:
        report({"changed": True, "failed": True, "output": f"ERROR: {exc}"})
        return 1
    report({"changed": True, "failed": not ok, "output": "\n".join(lines), "started_supervisord": False})
    return 0 if ok else 1


def report(result: dict[str, Any], manager: str = "supervisord") -> None:
    """The one JSON line the caller reads (scale.yml's raw step gets stdout and stderr together)."""
    print(json.dumps({**result, "service_manager": manager}), flush=True)


def service_manager(requested: str) -> str:
    """``auto`` as the service_manager role resolves it: systemd where it is PID 1, supervisord otherwise."""
    if requested != "auto":
        return requested
    return "systemd" if os.path.isdir("/run/systemd/system") else "supervisord"


def programs(text: str) -> set[str]:
    """The program names a supervisord program file defines."""
    return set(re.findall(r"(?m)^\[program:([^\]]+)\]", text))


def write(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(content)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def socket_path(config: Path) -> str:
    """The UNIX socket supervisorctl would use: ``[supervisorctl] serverurl``, else ``[unix_http_server] file``."""
    parser = configparser.RawConfigParser(strict=False)
    parser.read(config, encoding="utf-8")
    url = parser.get("supervisorctl", "serverurl", fallback="")
    if url.startswith("unix://"):
        return url[len("unix://") :]
    path = parser.get("unix_http_server", "file", fallback="")
    if not path:
        raise SystemExit(f"{config}: no unix:// serverurl and no [unix_http_server] file")
    return path


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.socket_path)
        self.sock = sock


class UnixSocketTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's UNIX socket (what ``supervisor.xmlrpc.SupervisorTransport`` does for unix://)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.socket_path = path

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixConnection(self.socket_path)


def connect(config: Path) -> Any:
    """The ``supervisor`` RPC namespace of the supervisord that ``config`` describes."""
    return xmlrpc.client.ServerProxy("http://localhost", transport=UnixSocketTransport(socket_path(config))).supervisor


def answers(supervisor: Any) -> bool:
    """Whether supervisord runs and answers (``supervisorctl pid``)."""
    try:
        return isinstance(supervisor.getPID(), int)
    except (OSError, xmlrpc.client.Error):
        return False


def update(supervisor: Any) -> tuple[list[str], bool]:
    """``supervisorctl update``: reload the configuration, then stop and remove the removed groups, restart the
    changed ones and add (so start) the new ones. Returns supervisorctl's output lines and whether all went well."""
    added, changed, removed = supervisor.reloadConfig()[0]
    lines: list[str] = []
    ok = True
    for name in removed:
        results = supervisor.stopProcessGroup(name)
        lines.append(f"{name}: stopped")
        if any(result["status"] == FAULT_FAILED for result in results):
            lines.append(f"{name}: has problems; not removing")
            ok = False
            continue
        supervisor.removeProcessGroup(name)
        lines.append(f"{name}: removed process group")
    for name in changed:
        supervisor.stopProcessGroup(name)
        lines.append(f"{name}: stopped")
        supervisor.removeProcessGroup(name)
        supervisor.addProcessGroup(name)
        lines.append(f"{name}: updated process group")
    for name in added:
        supervisor.addProcessGroup(name)
        lines.append(f"{name}: added process group")
    return lines, ok


if __name__ == "__main__":
    sys.exit(main())
