#!/usr/bin/env python3
"""Install a supervisord program file from stdin and apply it, in one remote step (the scale fast path).

Writes the file (atomically, mode 0644) only when its content differs, then runs ``supervisorctl update``, which
starts added programs and stops removed ones without touching the others. Starts the private supervisord when it
is not answering. Prints ``{"changed": bool, ...}``; standard library only. With ``--check`` (Ansible's check
mode) it changes nothing and says which programs it would add and remove.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", type=Path, required=True, help="program file to install")
    parser.add_argument("--config", required=True, help="supervisord.conf of the private supervisord")
    parser.add_argument("--supervisorctl", default="/usr/bin/supervisorctl")
    parser.add_argument("--supervisord", default="/usr/bin/supervisord")
    parser.add_argument("--check", action="store_true", help="change nothing: say what would change")
    args = parser.parse_args()
    content = sys.stdin.read()
    if content and not content.endswith("\n"):
        content += "\n"
    try:
        current = args.file.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    changed = current != content
    if args.check:
        before, after = programs(current or ""), programs(content)
        print(json.dumps({"changed": changed, "check": True, "add": sorted(after - before),
                          "remove": sorted(before - after)}))  # fmt: skip
        return 0
    ctl = [args.supervisorctl, "-c", args.config]
    started = False
    pid = subprocess.run([*ctl, "pid"], capture_output=True, text=True, check=False)
    if pid.returncode != 0 or not pid.stdout.strip().isdigit():
        if changed:
            write(args.file, content)
        subprocess.run([args.supervisord, "-c", args.config], check=True)
        print(json.dumps({"changed": True, "started_supervisord": True}))
        return 0
    if changed:
        write(args.file, content)
        update = subprocess.run([*ctl, "update"], capture_output=True, text=True, check=False)
        out = update.stdout.strip()
        if update.returncode != 0 or "ERROR" in out:
            print(json.dumps({"changed": True, "failed": True, "output": out}))
            return 1
        print(json.dumps({"changed": True, "output": out, "started_supervisord": started}))
        return 0
    print(json.dumps({"changed": False}))
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
