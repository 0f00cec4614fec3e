"""The Ansible layout: every documented command works from the repository root, and roles keep to their own files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PLAYBOOKS = sorted(p.name for p in (REPO_ROOT / "playbooks").glob("*.yml"))
VENV_BIN = Path(sys.executable).parent  # the ansible commands installed beside this Python


def root_env() -> dict[str, str]:
    """The environment of an operator at the root: no ANSIBLE_CONFIG, no roles path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_each_playbook_parses_from_the_root_with_no_environment(tmp_path: Path, playbook: str) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n    workers: {}\n    controller: {}\n    redis: {}\n", encoding="utf-8")
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "--syntax-check", "-i", str(inventory),
         f"playbooks/{playbook}"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=120, env=root_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_root_ansible_cfg_is_the_only_one() -> None:
    found = sorted(str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.glob("**/ansible.cfg") if ".venv" not in p.parts)
    assert found == ["ansible.cfg"]
    text = (REPO_ROOT / "ansible.cfg").read_text(encoding="utf-8")
    assert re.search(r"(?m)^roles_path\s*=\s*roles\s*$", text)


def _task_files(role: Path) -> list[Path]:
    return sorted((role / "tasks").glob("*.yml")) + sorted((role / "handlers").glob("*.yml"))


def _includes(node: object) -> list[dict[str, object]]:
    """Every include_role / import_role argument block below ``node``."""
    found: list[dict[str, object]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key.split(".")[-1] in {"include_role", "import_role"} and isinstance(value, dict):
                found.append(value)
            found += _includes(value)
    elif isinstance(node, list):
        for item in node:
            found += _includes(item)
    return found


def test_no_role_runs_another_role_s_task_files() -> None:
    """A role uses another only through that role's main entry point (its documented variables)."""
    offenders = []
    for role in sorted(p for p in (REPO_ROOT / "roles").iterdir() if p.is_dir()):
        for path in _task_files(role):
            for include in _includes(yaml.safe_load(path.read_text(encoding="utf-8"))):
                if include.get("name") != role.name and "tasks_from" in include:
                    offenders.append(f"{path.relative_to(REPO_ROOT)}: {include}")
    assert offenders == []


def test_one_role_owns_the_service_manager_rule_and_one_the_release() -> None:
    owners = {"/run/systemd/system": "service_manager", "build_wheelhouse.py": "release"}
    for needle, owner in owners.items():
        users = sorted(
            path.relative_to(REPO_ROOT).parts[1]
            for path in (REPO_ROOT / "roles").glob("*/tasks/*.yml")
            if needle in path.read_text(encoding="utf-8")
        )
        assert users == [owner], needle


def test_playbooks_run_with_the_mitogen_strategy_from_the_root(tmp_path: Path) -> None:
    """ansible.cfg's default strategy loads and runs a play (without mitogen every playbook but scale.yml fails)."""
    dump = subprocess.run(
        [str(VENV_BIN / "ansible-config"), "dump", "--only-changed"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=120, env=root_env(),
    )  # fmt: skip
    assert re.search(r"(?m)^DEFAULT_STRATEGY\(.*\) = mitogen_linear$", dump.stdout), dump.stdout + dump.stderr
    play = tmp_path / "probe.yml"
    play.write_text(
        "- name: Probe\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Write through a module\n      ansible.builtin.copy:\n"
        f"        dest: {tmp_path / 'written'}\n        content: ran\n        mode: '0600'\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", str(play)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=120, env=root_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "written").read_text(encoding="utf-8") == "ran"


def test_the_actuator_s_scale_run_keeps_the_linear_strategy() -> None:
    """scale.yml is the decision -> claiming path: mitogen's start-up per run would add about a second to it."""
    plays = yaml.safe_load((REPO_ROOT / "playbooks" / "scale.yml").read_text(encoding="utf-8"))
    assert [play.get("strategy") for play in plays] == ["linear"] * len(plays)
