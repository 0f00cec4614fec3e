"""roles/worker/files/worker_programs.py, as site.yml's handlers run it under the host lock, on a real supervisord.

The handlers never carry an instance list read at play start: the tool reads the instances when it runs. So a
restart restarts exactly the worker programs supervisord has then (one the controller added meanwhile too, none it
removed), and a program-file update re-renders the file for the instances it has then, byte for byte what the
controller's scale run writes from the role's template (else every site.yml run would restart the programs).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.env import load_script, supervisor_rpc
from tests import private_supervisord

REPO_ROOT = Path(__file__).resolve().parent.parent
FILES = REPO_ROOT / "roles" / "worker" / "files"
TOOL = FILES / "worker_programs.py"
TEMPLATE = REPO_ROOT / "roles" / "worker" / "templates" / "supervisord-workers.conf.j2"
SUPERVISORD = shutil.which("supervisord")
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable

pytestmark = pytest.mark.skipif(SUPERVISORD is None, reason="supervisord is not installed (make test-deps)")


def prototype_text(root: Path, stop_s: int = 5) -> str:
    """A program file rendered for the placeholder instance, shaped as the role's template renders it."""
    return (
        "# Ansible managed\n# One program per worker instance.\n\n"
        "[program:captcha-worker-@worker_instance@]\ncommand=/bin/sleep 600\nautostart=true\nstartsecs=0\n"
        f"stopwaitsecs={stop_s}\nstdout_logfile={root}/@worker_instance@.log\nredirect_stderr=true"
    )  # no last newline: a template lookup drops it


@pytest.fixture
def supervisor_root(tmp_path: Path) -> Iterator[Path]:
    """A private supervisord with a worker program file (instances 1 and 2) and a controller program beside it."""
    with private_supervisord.supervisord_root(tmp_path) as root:
        (root / "conf.d" / "captcha-controller.conf").write_text(
            f"[program:captcha-controller]\ncommand=/bin/sleep 600\nstartsecs=0\nstdout_logfile={root}/c.log\n"
        )
        (root / "proto.in").write_text(prototype_text(root))
        subprocess.run([str(SUPERVISORD), "-c", str(root / "supervisord.conf")], check=True, timeout=30)
        deadline = time.monotonic() + 10
        while not (root / "s.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield root


def tool(root: Path, command: str, *args: str, rc: int | None = None) -> dict[str, Any]:
    """Run the tool as the handler does (the host's Python, under fleet_helper restart's `--`)."""
    extra = ["--file", str(root / "conf.d" / "workers.conf"), "--prototype", str(root / "proto.in")]
    done = subprocess.run(
        [PYTHON, str(TOOL), "--config", str(root / "supervisord.conf"), command,
         *(extra if command == "apply" else []), *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if rc is not None:
        assert done.returncode == rc, done.stdout + done.stderr
    if done.returncode != 0:
        answer.setdefault("changed", False)
    return answer


def pids(root: Path) -> dict[str, int]:
    """name -> pid of the RUNNING programs."""
    supervisor = supervisor_rpc(root / "supervisord.conf")
    return {p["name"]: p["pid"] for p in supervisor.getAllProcessInfo() if p["statename"] == "RUNNING"}


def settled_pids(root: Path, names: set[str], timeout_s: float = 15.0) -> dict[str, int]:
    """``pids`` once every one of ``names`` runs (a program just started is STARTING for its startsecs)."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = pids(root)
        if names <= set(now) or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def test_restart_restarts_the_worker_programs_that_run_when_it_runs(supervisor_root: Path) -> None:
    root = supervisor_root
    assert tool(root, "apply", "--instances", "1,2", rc=0)["changed"] is True
    # the controller replaces instance 2 by 10 after site.yml's play began (the game day's "no such process")
    assert tool(root, "apply", "--instances", "1,10", rc=0)["changed"] is True
    before = settled_pids(root, {"captcha-controller", "captcha-worker-1", "captcha-worker-10"})
    assert set(before) == {"captcha-controller", "captcha-worker-1", "captcha-worker-10"}
    answer = tool(root, "restart", rc=0)
    assert sorted(answer["restarted"]) == ["captcha-worker-1", "captcha-worker-10"]
    after = settled_pids(root, {"captcha-controller", "captcha-worker-1", "captcha-worker-10"})
    assert set(after) == set(before)
    assert all(after[name] != before[name] for name in ("captcha-worker-1", "captcha-worker-10")), (before, after)
    assert after["captcha-controller"] == before["captcha-controller"], "only the worker programs restart"


def test_apply_renders_the_file_for_the_instances_it_has_when_it_runs(supervisor_root: Path) -> None:
    root = supervisor_root
    tool(root, "apply", "--instances", "3,7", rc=0)
    unchanged = settled_pids(root, {"captcha-controller", "captcha-worker-3", "captcha-worker-7"})
    assert tool(root, "apply", "--check", rc=0) == {"changed": False, "instances": ["3", "7"]}
    assert tool(root, "apply", rc=0)["failed"] is False
    assert pids(root) == unchanged, "a run that changes nothing restarts nothing"
    # a changed template (site.yml writes the new prototype): the file's own instances get it, none other
    (root / "proto.in").write_text(prototype_text(root, stop_s=9))
    assert tool(root, "apply", "--check", rc=0) == {"changed": True, "instances": ["3", "7"]}
    assert tool(root, "apply", rc=0)["changed"] is True
    text = (root / "conf.d" / "workers.conf").read_text()
    assert text.count("stopwaitsecs=9") == 2 and "@worker_instance@" not in text
    assert set(pids(root)) == {"captcha-controller", "captcha-worker-3", "captcha-worker-7"}
    assert tool(root, "apply", "--check", rc=0)["changed"] is False


def test_a_program_that_cannot_start_fails_the_restart(supervisor_root: Path) -> None:
    root = supervisor_root
    tool(root, "apply", "--instances", "1", rc=0)
    proto = root / "proto.in"
    proto.write_text(proto.read_text().replace("command=/bin/sleep 600", f"command={root}/missing"))
    tool(root, "apply")  # the program now points at a command that does not exist
    answer = tool(root, "restart", rc=1)
    assert answer["failed"] is True and "captcha-worker-1" in answer["error"]


def test_the_prototype_renders_what_the_template_renders(tmp_path: Path) -> None:
    """The role's own template through Ansible's template lookup (as scale_apply.yml and site.yml render it)."""
    playbook = tmp_path / "render.yml"
    out = tmp_path / "out"
    out.mkdir()
    lookup = "{{{{ lookup('ansible.builtin.template', '{}', template_vars={{'worker_instances': {!r}}}) }}}}"
    tasks = [
        {
            "name": f"render {name}",
            "ansible.builtin.copy": {
                "content": lookup.format(TEMPLATE, instances),
                "dest": str(out / name),
                "mode": "0644",
            },
        }
        for name, instances in (("proto", ["@worker_instance@"]), ("two", ["1", "s2"]), ("none", []))
    ]
    playbook.write_text(
        json.dumps(
            [{"name": "render", "hosts": "localhost", "gather_facts": False,
              "vars_files": [str(REPO_ROOT / "roles" / "worker" / "defaults" / "main.yml")], "tasks": tasks}]
        )
    )  # fmt: skip
    done = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "ansible-playbook"), "-c", "local", "-i", "localhost,",
         "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
        capture_output=True, text=True, check=False, timeout=120, cwd=REPO_ROOT,
        env={"PATH": f"{REPO_ROOT / '.venv' / 'bin'}:/usr/bin:/bin", "ANSIBLE_STRATEGY": "linear",
             "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    worker_programs = load_script(TOOL)  # a file the hosts run, not a package module
    prototype = (out / "proto").read_text()
    for name, instances in (("two", ["1", "s2"]), ("none", [])):
        written = (out / name).read_text()
        written += "" if written.endswith("\n") else "\n"  # as supervisor_apply.py writes it
        assert worker_programs.render(prototype, instances) == written, name


def test_a_prototype_without_the_placeholder_is_refused(supervisor_root: Path) -> None:
    root = supervisor_root
    (root / "proto.in").write_text("[program:captcha-worker-1]\ncommand=/bin/true\n")
    answer = tool(root, "apply", "--instances", "1", rc=1)
    assert answer["failed"] is True and "@worker_instance@" in answer["error"]
    assert not (root / "conf.d" / "workers.conf").exists(), "nothing written"
