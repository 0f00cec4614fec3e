"""The controller's ``--actuator ansible`` settings: the ``ansible_actuator:`` section, checked by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from captcha_fleet.apps.cli import main
from captcha_fleet.contract.config import ConfigError
from captcha_fleet.controller.actuators.ansible import actuator_config_from_section


def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  children:\n    workers:\n      hosts:\n        a: {}\n        b: {}\n")
    return path


def test_section_as_the_controller_role_writes_it(tmp_path: Path) -> None:
    inv = inventory(tmp_path)
    section = {"inventory": str(inv), "data_dir": str(tmp_path / "runner"), "max_services_per_host": 4}
    config = actuator_config_from_section(section)
    assert config.inventory == inv and config.data_dir == tmp_path / "runner"
    assert config.max_services_per_host == 4


def test_flag_overrides_and_errors_name_the_field(tmp_path: Path) -> None:
    inv = inventory(tmp_path)
    assert actuator_config_from_section({}, inventory=str(inv)).inventory == inv
    with pytest.raises(ConfigError, match=r"ansible_actuator\.inventory"):
        actuator_config_from_section({})
    with pytest.raises(ConfigError, match=r"ansible_actuator\.inventory: .* does not exist"):
        actuator_config_from_section({"inventory": str(tmp_path / "missing.yml")})
    with pytest.raises(ConfigError, match=r"ansible_actuator\.forkz"):
        actuator_config_from_section({"inventory": str(inv), "forkz": 3})
    with pytest.raises(ConfigError, match=r"ansible_actuator\.timeout_s"):
        actuator_config_from_section({"inventory": str(inv), "timeout_s": "soon"})


def test_controller_cli_refuses_a_missing_inventory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = tmp_path / "fleet.yml"
    fleet.write_text(f"ansible_actuator:\n  inventory: {tmp_path / 'nope.yml'}\n")
    assert main(["controller", "--config", str(fleet), "--actuator", "ansible", "--once"]) == 2
    assert "ansible_actuator.inventory" in capsys.readouterr().err


def test_the_controllers_per_host_cap_reaches_the_ansible_actuator(tmp_path: Path) -> None:
    """``controller.instances_per_host`` (production.example sets it) caps services per host with either actuator;
    ``ansible_actuator.max_services_per_host`` still wins where it is set."""
    from captcha_fleet.contract.config import load_config
    from captcha_fleet.controller.cli import ansible_actuator_section

    inv = inventory(tmp_path)
    path = tmp_path / "fleet.yml"
    path.write_text(f"controller:\n  instances_per_host: 8\nansible_actuator:\n  inventory: {inv}\n")
    section = ansible_actuator_section(load_config(path, env={}))
    assert actuator_config_from_section(section).max_services_per_host == 8
    path.write_text(
        f"controller:\n  instances_per_host: 8\nansible_actuator:\n  inventory: {inv}\n  max_services_per_host: 3\n"
    )
    assert actuator_config_from_section(ansible_actuator_section(load_config(path, env={}))).max_services_per_host == 3
    path.write_text(f"ansible_actuator:\n  inventory: {inv}\n")
    assert actuator_config_from_section(ansible_actuator_section(load_config(path, env={}))).max_services_per_host == 20
