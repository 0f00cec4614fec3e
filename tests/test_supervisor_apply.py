"""The scale fast path's applier (roles/worker/files/supervisor_apply.py) against a real private supervisord.

Run as the role runs it (the host's /usr/bin/python3, the program file in an argument), with no supervisorctl
process: it must start supervisord when none answers, add and start new programs, stop and remove dropped
ones, leave the others running (same pid), and change nothing in check mode.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import private_supervisord

REPO_ROOT = Path(__file__).resolve().parent.parent
APPLIER = REPO_ROOT / "roles" / "worker" / "files" / "supervisor_apply.py"
SUPERVISORD = shutil.which("supervisord")

pytestmark = pytest.mark.skipif(SUPERVISORD is None, reason="supervisord is not installed (make test-deps)")


def _program(name: str, root: Path) -> str:
    return (
        f"[program:{name}]\ncommand=/bin/sleep 600\nautostart=true\nstartsecs=0\n"
        f"stdout_logfile={root}/{name}.log\nredirect_stderr=true\n"
    )


@pytest.fixture
def supervisor_root(tmp_path: Path) -> Iterator[Path]:
    """The private supervisord's config, none running: the applier starts it."""
    with private_supervisord.supervisord_root(tmp_path) as root:
        yield root


def _apply(
    root: Path, programs: list[str], *extra: str, stdin: bool = False, manager: str = "supervisord"
) -> dict[str, object]:
    """Run the applier as scale.yml's raw step does (the file in --programs-b64), or with the file on stdin."""
    content = "".join(_program(name, root) for name in programs)
    source = [] if stdin else ["--programs-b64", base64.b64encode(content.encode()).decode()]
    done = subprocess.run(
        ["/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable, str(APPLIER),
         "--file", str(root / "conf.d" / "workers.conf"), "--config", str(root / "supervisord.conf"),
         "--supervisord", str(SUPERVISORD), "--service-manager", manager, *source, *extra],
        input=content if stdin else "", capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    return dict(json.loads(done.stdout))


def _running(root: Path) -> dict[str, int]:
    """name -> pid of the RUNNING programs, as supervisorctl reports them."""
    out = subprocess.run(
        ["supervisorctl", "-c", str(root / "supervisord.conf"), "status"], capture_output=True, text=True, check=False
    ).stdout
    running = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "RUNNING":
            running[fields[0]] = int(fields[3].rstrip(","))
    return running


def _wait_running(root: Path, names: set[str]) -> dict[str, int]:
    deadline = time.monotonic() + 15
    while set(running := _running(root)) != names:
        assert time.monotonic() < deadline, running
        time.sleep(0.1)
    return running


def test_the_applier_starts_supervisord_then_adds_and_removes_programs_leaving_the_rest(supervisor_root: Path) -> None:
    root = supervisor_root
    first = _apply(root, ["w-1"])
    assert first["changed"] is True and first["started_supervisord"] is True and first["failed"] is False
    assert first["service_manager"] == "supervisord"
    before = _wait_running(root, {"w-1"})

    added = _apply(root, ["w-1", "w-2", "w-3"], stdin=True)
    assert added["changed"] is True and added["failed"] is False
    assert "w-2: added process group" in str(added["output"])
    after = _wait_running(root, {"w-1", "w-2", "w-3"})
    assert after["w-1"] == before["w-1"]  # the running program was not restarted

    assert _apply(root, ["w-1", "w-2", "w-3"]) == {"changed": False, "service_manager": "supervisord"}

    removed = _apply(root, ["w-3"])
    assert "w-1: removed process group" in str(removed["output"])
    left = _wait_running(root, {"w-3"})
    assert left["w-3"] == after["w-3"]


def test_the_applier_in_check_mode_changes_nothing(supervisor_root: Path) -> None:
    root = supervisor_root
    _apply(root, ["w-1"])
    _wait_running(root, {"w-1"})
    check = _apply(root, ["w-2"], "--check")
    assert check == {
        "changed": True,
        "check": True,
        "add": ["w-2"],
        "remove": ["w-1"],
        "service_manager": "supervisord",
    }
    assert set(_running(root)) == {"w-1"}
    assert "w-2" not in (root / "conf.d" / "workers.conf").read_text()


def test_auto_resolves_the_service_manager_and_leaves_a_systemd_host_to_the_systemd_tasks(
    supervisor_root: Path,
) -> None:
    """``auto`` as the service_manager role resolves it; where systemd is PID 1 the applier writes nothing."""
    systemd = Path("/run/systemd/system").is_dir()
    answer = _apply(supervisor_root, ["w-1"], "--check", manager="auto")
    assert answer["service_manager"] == ("systemd" if systemd else "supervisord")
    assert ("add" in answer) is not systemd  # only the supervisord path gets as far as comparing programs
    assert _apply(supervisor_root, [], manager="systemd") == {"changed": False, "service_manager": "systemd"}
