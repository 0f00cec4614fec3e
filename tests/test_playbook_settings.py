"""site.yml refuses missing settings with a message that says which, before it touches a host.

The checks run on this machine (``ansible_connection: local``): the settings assert is the first task of the
worker and controller roles, so nothing is installed when it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("host", "role"), [("w1", "worker"), ("c1", "controller")])
def test_an_empty_redis_url_is_named_not_censored(tmp_path: Path, host: str, role: str) -> None:
    inventory = tmp_path / "hosts.yml"
    local = f"{{ansible_connection: local, ansible_become: false, ansible_python_interpreter: {sys.executable}}}"
    inventory.write_text(
        "all:\n  children:\n"
        f"    workers:\n      hosts:\n        w1: {local}\n"
        f"    controller:\n      hosts:\n        c1: {local}\n",
        encoding="utf-8",
    )
    secret = "k-" + os.urandom(8).hex()
    env = {  # as an operator at the repository root: ansible.cfg found there, no ANSIBLE_CONFIG
        **{k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")},
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
         str(REPO_ROOT / "playbooks" / "site.yml"), "--limit", host,
         "-e", json.dumps({"worker_redis_url": "", "controller_redis_url": "", "worker_api_key": secret})],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=120, env=env,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{role}_redis_url must be set" in out, out[-2000:]
    assert "censored" not in out
    assert secret not in out
