"""The controller role's vault password: a service has no terminal for ``--ask-vault-pass``, so the role writes
the password to a file only the controller user reads and names that file (never the password) in fleet.yml.

The role's real ``fleet.yml.j2`` is rendered by Ansible itself on this machine (``ansible_connection: local``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
ROLE = REPO_ROOT / "roles" / "controller"


def render_fleet_yml(tmp_path: Path, **extra_vars: Any) -> dict[str, Any]:
    """fleet.yml as the role writes it, with the role's defaults and ``extra_vars``."""
    out = tmp_path / "fleet.yml"
    playbook = tmp_path / "render.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars_files": [str(ROLE / "defaults" / "main.yml")],
                    "tasks": [
                        {
                            "name": "Render fleet.yml",
                            "ansible.builtin.template": {
                                "src": str(ROLE / "templates" / "fleet.yml.j2"),
                                "dest": str(out),
                            },
                        }
                    ],
                }
            ]
        ),
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")} | {"ANSIBLE_NOCOLOR": "1"}
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(playbook),
         "-e", json.dumps({**local, "controller_root": str(tmp_path / "root"), **extra_vars})],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    rendered: dict[str, Any] = yaml.safe_load(out.read_text(encoding="utf-8"))
    return rendered


def test_a_vault_password_reaches_the_actuator_as_a_file_never_as_text(tmp_path: Path) -> None:
    password = "vault-" + os.urandom(8).hex()
    with_password = render_fleet_yml(tmp_path, controller_vault_password=password)
    text = (tmp_path / "fleet.yml").read_text(encoding="utf-8")
    assert password not in text
    expected = str(tmp_path / "root" / "etc" / "captcha-controller" / "vault-password")
    assert with_password["ansible_actuator"]["vault_password_file"] == expected

    without = render_fleet_yml(tmp_path)
    assert "vault_password_file" not in without["ansible_actuator"]  # the derived inventory holds no secret
    overridden = render_fleet_yml(
        tmp_path, controller_vault_password=password, controller_actuator_settings={"vault_password_file": "/srv/vp"}
    )
    assert overridden["ansible_actuator"]["vault_password_file"] == "/srv/vp"
