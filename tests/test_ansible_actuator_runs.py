"""The ansible actuator's runs on this machine (real ansible-runner and ansible-playbook, a host that refuses SSH):
what reaches disk under ``data_dir``, and what a killed controller left there.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import pytest

from controller.actuators.ansible import AnsibleActuator, AnsibleActuatorConfig, runner_env


def closed_port() -> int:
    """A loopback port nothing listens on (SSH to it is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refusing_inventory(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.yml"
    path.write_text(
        "all:\n  children:\n    workers:\n      hosts:\n"
        f"        w1: {{ansible_host: 127.0.0.1, ansible_port: {closed_port()}}}\n",
        encoding="utf-8",
    )
    return path


def test_no_secret_of_the_controller_environment_reaches_the_runner_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_password, api_key = secrets.token_hex(16), secrets.token_hex(16)
    monkeypatch.setenv("REDIS_URL", f"redis://:{redis_password}@10.0.0.1:6379/0")
    monkeypatch.setenv("CAPTCHAAI_KEY", api_key)
    data_dir = tmp_path / "runner"
    leaked: list[str] = []
    seen_files: list[str] = []

    def inspect(private: Path) -> None:
        for path in private.rglob("*"):
            if path.is_file():
                seen_files.append(path.name)
                text = path.read_text(errors="replace")
                if redis_password in text or api_key in text:
                    leaked.append(str(path.relative_to(private)))

    config = AnsibleActuatorConfig(inventory=refusing_inventory(tmp_path), data_dir=data_dir, timeout_s=60)
    actuator = AnsibleActuator(config, inspect_artifacts=inspect)
    try:
        actuator.apply({"w1": frozenset({"1"})})
        assert actuator.wait_idle(60)
    finally:
        actuator.close()
    assert "command" in seen_files, "the run wrote no artifacts: nothing was checked"
    assert leaked == []
    state = actuator.observe().hosts["w1"]
    assert not state.reachable and state.last_error and state.last_error.startswith("unreachable")
    assert list(data_dir.iterdir()) == []


def test_runner_env_keeps_what_ansible_needs_and_drops_the_rest() -> None:
    prepared = {
        "PATH": "/venv/bin:/usr/bin",
        "HOME": "/var/lib/c",
        "REDIS_URL": "redis://:pw@h/0",
        "CAPTCHAAI_KEY": "k",
        "ANSIBLE_STDOUT_CALLBACK": "awx_display",
        "AWX_ISOLATED_DATA_DIR": "/d",
    }
    env = runner_env(prepared, {"PATH": "/venv/bin:/usr/bin"})
    assert env == {
        "PATH": "/venv/bin:/usr/bin",
        "HOME": "/var/lib/c",
        "ANSIBLE_STDOUT_CALLBACK": "awx_display",
        "AWX_ISOLATED_DATA_DIR": "/d",
    }


def test_run_dirs_a_killed_controller_left_are_swept_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "runner"
    stale = data_dir / "scale-abc123" / "artifacts" / "x"
    stale.mkdir(parents=True)
    (stale / "command").write_text('{"env": {"CAPTCHAAI_KEY": "k"}}', encoding="utf-8")
    unrelated = data_dir / "notes"
    unrelated.mkdir()
    actuator = AnsibleActuator(AnsibleActuatorConfig(inventory=refusing_inventory(tmp_path), data_dir=data_dir))
    actuator.close()
    assert sorted(p.name for p in data_dir.iterdir()) == ["notes"]
