"""Inventories as Ansible reads them: INI with ranges, a directory with group_vars/host_vars and vault, a script,
a ``constructed`` layer. Each is read by ``doctor`` (the CLI), by the ansible actuator and by ``ansible-inventory``
itself, and the three must name the same hosts.

Every host points at a closed loopback port (or ``ansible_connection=local``), so doctor's SSH step fails at once.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from captcha_fleet.apps.cli import main
from captcha_fleet.contract.inventory import InventoryError, read_inventory
from captcha_fleet.controller.actuators.ansible import AnsibleActuator, AnsibleActuatorConfig
from captcha_fleet.local_servers.redis_server import free_port

ANSIBLE_INVENTORY = str(Path(sys.executable).parent / "ansible-inventory")
VAULT_PASSWORD = "vault-pw-for-tests-5e1"
VAULTED_SECRET = "TOPSECRET-host-var-9d2c"
VAULTED_SSH_PASSWORD = "ssh-pass-vaulted-41aa"
CLOSED = free_port()


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def _vault_lib() -> Any:
    from ansible.parsing.vault import VaultLib, VaultSecret

    return VaultLib([("default", VaultSecret(VAULT_PASSWORD.encode()))])


def vault(text: str, out: Path) -> Path:
    """Encrypt ``text`` into ``out`` with Ansible's vault library (what ``ansible-vault encrypt`` writes)."""
    return write(out, _vault_lib().encrypt(text).decode())


def vault_string(name: str, value: str) -> str:
    """An inline ``name: !vault |`` YAML entry, as ``ansible-vault encrypt_string`` prints it."""
    lines = _vault_lib().encrypt(value).decode().splitlines()
    return f"{name}: !vault |\n" + "".join(f"  {line}\n" for line in lines)


def password_file(tmp_path: Path) -> Path:
    """An executable vault password client (as with a secrets manager); Ansible runs it and reads its stdout."""
    path = tmp_path / "vault-password-client"
    if not path.exists():
        write(path, f"#!/bin/sh\necho '{VAULT_PASSWORD}'\n", 0o700)
    return path


def ansible_graph(sources: list[Path], group: str, *extra: str) -> set[str]:
    """The hosts of ``group`` as ``ansible-inventory --graph`` draws them (read apart from our parser)."""
    command = [ANSIBLE_INVENTORY, "--graph", group, *extra]
    for source in sources:
        command += ["-i", str(source)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return {line.split("--", 1)[1] for line in done.stdout.splitlines() if "--" in line and "@" not in line}


def ansible_list_hosts(inventory: Path, pattern: str) -> set[str]:
    """``ansible PATTERN --list-hosts``: the hosts a play on that pattern would run on."""
    ansible = str(Path(sys.executable).parent / "ansible")
    done = subprocess.run(
        [ansible, pattern, "--list-hosts", "-i", str(inventory)], check=True, capture_output=True, text=True
    )
    return {line.strip() for line in done.stdout.splitlines()[1:] if line.strip()}


def doctor_hosts(capsys: pytest.CaptureFixture[str], sources: list[Path], *extra: str) -> tuple[int, dict[str, Any]]:
    """Run ``captcha-fleet doctor --json -i ...``; return the exit code and the checks by name."""
    argv = ["doctor", "--json", "--redis-url", f"redis://127.0.0.1:{CLOSED}/0", "--timeout", "1"]
    for source in sources:
        argv += ["-i", str(source)]
    code = main([*argv, *extra])
    out, err = capsys.readouterr()
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    checks["_output"] = {"text": out + err}
    return code, checks


def actuator_hosts(inventory: Path, group: str, tmp_path: Path, vault_file: Path | None = None) -> set[str]:
    """The hosts the ansible actuator manages for ``group``, as the controller builds it."""
    config = AnsibleActuatorConfig(
        inventory=inventory, group=group, data_dir=tmp_path / "runner", vault_password_file=vault_file
    )
    actuator = AnsibleActuator(config)
    try:
        return set(actuator.observe().hosts)
    finally:
        actuator.close()


def three_views(
    capsys: pytest.CaptureFixture[str],
    source: Path,
    group: str,
    tmp_path: Path,
    vault_file: Path | None = None,
    doctor_args: tuple[str, ...] = (),
) -> tuple[set[str], set[str], int, dict[str, Any]]:
    """``ansible-inventory --graph``, the actuator and doctor on one source, at once (three Ansible start-ups)."""
    graph_args = ("--vault-password-file", str(vault_file)) if vault_file else ()
    with ThreadPoolExecutor(max_workers=2) as pool:
        graph = pool.submit(ansible_graph, [source], group, *graph_args)
        managed = pool.submit(actuator_hosts, source, group, tmp_path, vault_file)
        code, checks = doctor_hosts(capsys, [source], *graph_args, *doctor_args)
        return graph.result(), managed.result(), code, checks


def ssh_hosts(checks: dict[str, Any]) -> set[str]:
    return {name.removeprefix("ssh ") for name in checks if name.startswith("ssh ")}


def test_ini_with_groups_and_ranges(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    inventory = write(
        tmp_path / "hosts.ini",
        f"""
[workers]
w[01:03].lan ansible_host=127.0.0.1 ansible_port={CLOSED}
db-[a:b] ansible_host=127.0.0.1 ansible_port={CLOSED} ansible_user=ops

[controllers]
ctl ansible_connection=local

[fleet:children]
workers
controllers

[workers:vars]
ansible_user=deploy
""",
    )
    expected = {"w01.lan", "w02.lan", "w03.lan", "db-a", "db-b"}
    graph, managed, code, checks = three_views(capsys, inventory, "workers", tmp_path)
    assert graph == expected and managed == expected
    assert code == 1  # the hosts do not answer; the inventory itself is fine
    assert checks["inventory"]["status"] == "ok"
    assert set(checks["inventory"]["data"]["hosts"]) == expected | {"ctl"}
    assert ssh_hosts(checks) == expected | {"ctl"}
    w01 = checks["ssh w01.lan"]
    assert w01["status"] == "fail" and w01["data"]["target"] == f"deploy@127.0.0.1:{CLOSED}"
    assert w01["data"]["checked"] == ["ssh"]
    assert checks["ssh db-a"]["data"]["target"] == f"ops@127.0.0.1:{CLOSED}"  # host var beats group var
    assert checks["ssh ctl"]["status"] == "skip" and "ansible_connection=local" in checks["ssh ctl"]["detail"]

    # --limit is an Ansible host pattern, applied by Ansible
    with ThreadPoolExecutor(max_workers=1) as pool:
        listed = pool.submit(ansible_list_hosts, inventory, "fleet:!db-*:!ctl")
        _, limited = doctor_hosts(capsys, [inventory], "--limit", "fleet:!db-*:!ctl")
        assert ssh_hosts(limited) == listed.result()
    assert ssh_hosts(limited) == {"w01.lan", "w02.lan", "w03.lan"}


def vaulted_directory(tmp_path: Path) -> Path:
    """An inventory directory: hosts.yml, group_vars/ (a vault file among them) and host_vars/ with !vault values."""
    directory = tmp_path / "inventory"
    write(
        directory / "hosts.yml",
        f"""
all:
  children:
    workers:
      hosts:
        w1: {{ansible_host: 127.0.0.1}}
        w2: {{ansible_host: 127.0.0.1}}
    redis:
      hosts:
        r1: {{ansible_host: 127.0.0.1, ansible_port: {CLOSED}}}
""",
    )
    # a templated connection setting: rendered by Ansible's templar with the host's variables
    write(
        directory / "group_vars" / "all" / "main.yml",
        f"ansible_user: deploy\nfleet_ssh_port: {CLOSED}\nansible_port: '{{{{ fleet_ssh_port }}}}'\n",
    )
    write(directory / "group_vars" / "workers.yml", "ansible_user: worker-admin\n")
    vault(f"fleet_secret: {VAULTED_SECRET}\n", directory / "group_vars" / "all" / "vault.yml")
    vault(f"host_secret: {VAULTED_SECRET}\nansible_user: w2-user\n", directory / "host_vars" / "w2.yml")
    write(directory / "host_vars" / "w1.yml", vault_string("ansible_password", VAULTED_SSH_PASSWORD))
    return directory


def test_directory_with_group_vars_host_vars_and_vault(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    directory = vaulted_directory(tmp_path)
    secret_file = password_file(tmp_path)
    expected = {"w1", "w2"}
    graph, managed, code, checks = three_views(capsys, directory, "workers", tmp_path, secret_file)
    assert graph == expected and managed == expected
    assert checks["inventory"]["status"] == "ok", checks["inventory"]
    assert ssh_hosts(checks) == expected | {"r1"}
    assert checks["ssh w1"]["data"]["target"] == f"worker-admin@127.0.0.1:{CLOSED}"  # group_vars/workers.yml
    assert checks["ssh w2"]["data"]["target"] == f"w2-user@127.0.0.1:{CLOSED}"  # from the vault-encrypted host_vars
    assert checks["ssh r1"]["data"]["target"] == f"deploy@127.0.0.1:{CLOSED}"  # group_vars/all/main.yml
    everything = checks["_output"]["text"] + caplog.text
    for secret in (VAULTED_SECRET, VAULTED_SSH_PASSWORD, VAULT_PASSWORD):
        assert secret not in everything

    # the inline !vault ansible_password is decrypted for the SSH probe (and kept out of repr)
    hosts = {h.name: h for h in read_inventory(directory, vault_password_file=secret_file).hosts}
    assert hosts["w1"].password == VAULTED_SSH_PASSWORD
    assert VAULTED_SSH_PASSWORD not in repr(hosts["w1"])

    # without the password: exit 2, the source and Ansible's words, no value
    code, checks = doctor_hosts(capsys, [directory])
    assert code == 2
    detail = checks["inventory"]["detail"]
    assert str(directory) in detail and "no vault secrets" in detail
    assert VAULTED_SECRET not in checks["_output"]["text"]

    # a vault file that decrypts to broken YAML: Ansible's message, never the decrypted text
    vault(f"host_secret: {VAULTED_SECRET}\nbroken: [unclosed\n", directory / "host_vars" / "w1" / "more.yml")
    code, checks = doctor_hosts(capsys, [directory], "--vault-password-file", str(secret_file))
    assert code == 2 and "YAML" in checks["inventory"]["detail"], checks["inventory"]
    assert VAULTED_SECRET not in checks["_output"]["text"]


def test_a_script_sees_no_fleet_secret_and_its_failure_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An executable dynamic inventory: read as Ansible runs it, without CAPTCHAAI_KEY / REDIS_URL in its env."""
    monkeypatch.setenv("CAPTCHAAI_KEY", "key-must-not-reach-the-script-1b7")
    monkeypatch.setenv("REDIS_URL", "redis://:redis-pass-not-for-scripts@127.0.0.1:1/0")
    monkeypatch.setenv("CLOUD_TOKEN", "a-cloud-credential")
    seen = tmp_path / "env-seen.json"
    script = write(
        tmp_path / "cloud.py",
        f"""#!{sys.executable}
import json, os, sys
json.dump(dict(os.environ), open({str(seen)!r}, "w"))
if os.environ.get("CLOUD_TOKEN") != "a-cloud-credential":
    sys.exit("cloud API: 401 unauthorized")
hosts = ["vm-1", "vm-2"]
print(json.dumps({{"workers": {{"hosts": hosts}},
    "_meta": {{"hostvars": {{h: {{"ansible_host": "127.0.0.1", "ansible_port": {CLOSED}}} for h in hosts}}}}}}))
""",
        0o755,
    )
    config = AnsibleActuatorConfig(inventory=script, data_dir=tmp_path / "runner")
    actuator = AnsibleActuator(config)
    try:
        managed = set(actuator.observe().hosts)
    finally:
        actuator.close()
    env = json.loads(seen.read_text())  # what the script saw when the actuator read it
    assert env["CLOUD_TOKEN"] == "a-cloud-credential"
    assert "CAPTCHAAI_KEY" not in env and "REDIS_URL" not in env
    assert managed == {"vm-1", "vm-2"} == ansible_graph([script], "workers")

    monkeypatch.delenv("CLOUD_TOKEN")
    with pytest.raises(InventoryError) as info:
        read_inventory(script)
    assert str(script) in str(info.value) and "401 unauthorized" in str(info.value)


def test_unparsable_file_is_an_error_not_an_empty_inventory(tmp_path: Path) -> None:
    broken = write(tmp_path / "hosts.ini", "[workers\nw1 ansible_port\n")
    with pytest.raises(InventoryError) as info:
        read_inventory(broken)
    message = str(info.value)
    assert message.startswith(f"inventory {broken}: Ansible could not read it: ")
    assert "failed to parse" in message.lower()


def test_constructed_layer_groups_hosts_by_a_variable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    directory = tmp_path / "inventory"
    write(
        directory / "01-hosts.yml",
        f"""
all:
  vars: {{ansible_host: 127.0.0.1, ansible_port: {CLOSED}}}
  hosts:
    big1: {{fleet_role: solver, cores: 16}}
    big2: {{fleet_role: solver, cores: 8}}
    small1: {{fleet_role: cache, cores: 2}}
""",
    )
    write(
        directory / "02-constructed.yml",
        """
plugin: ansible.builtin.constructed
strict: true
keyed_groups:
  - key: fleet_role
    prefix: role
groups:
  workers: fleet_role == 'solver' and cores >= 8
""",
    )
    expected = {"big1", "big2"}
    graph, managed, _, checks = three_views(capsys, directory, "workers", tmp_path, doctor_args=("--limit", "workers"))
    assert graph == expected and managed == expected
    assert ssh_hosts(checks) == expected
    assert {"role_solver", "workers"} <= set(checks["inventory"]["data"]["groups"])  # keyed_groups and groups


def test_a_directory_is_accepted_as_the_actuator_inventory(tmp_path: Path) -> None:
    from captcha_fleet.controller.actuators.ansible import actuator_config_from_section

    directory = tmp_path / "inventory"
    directory.mkdir()
    assert actuator_config_from_section({"inventory": str(directory)}).inventory == directory
    assert stat.S_ISDIR(os.stat(directory).st_mode)


def test_the_production_example_reads_with_its_documented_vault_password(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "inventory" / "production.example"
    password = write(tmp_path / "example-vault-password", "example-vault-password\n", 0o600)
    inventory = read_inventory(example, vault_password_file=password)
    assert inventory.names("workers") == [
        "worker1.example.internal",
        "worker2.example.internal",
        "worker3.example.internal",
    ]
    assert {h.user for h in inventory.hosts} == {"deploy"}  # group_vars/all/main.yml
    assert "vault_redis_password" in next(iter(inventory.hosts)).variables  # decrypted from the vault file


KNOWN_HOSTS_LINE = "10.20.0.11 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFmDlq0jq8nKJZ0gcWm0dBeQHNzwTq4wM0oE8c9ZQq7v\n"


def test_known_hosts_beside_the_hosts_is_read_only_as_the_readme_names_it(tmp_path: Path) -> None:
    """The production README's ``known_hosts.txt`` beside ``hosts.yml`` leaves ``-i DIRECTORY`` readable; a bare
    ``known_hosts`` is refused (Ansible reads every file there) in a few lines that name the file and the fix."""
    import shutil

    example = Path(__file__).resolve().parent.parent / "inventory" / "production.example"
    directory = tmp_path / "production"
    shutil.copytree(example, directory)
    password = write(tmp_path / "example-vault-password", "example-vault-password\n", 0o600)
    write(directory / "known_hosts.txt", KNOWN_HOSTS_LINE)
    assert len(read_inventory(directory, vault_password_file=password).names("workers")) == 3

    (directory / "known_hosts.txt").rename(directory / "known_hosts")
    with pytest.raises(InventoryError) as refused:
        read_inventory(directory, vault_password_file=password)
    message = str(refused.value)
    lines = message.splitlines()
    assert f"{directory / 'known_hosts'}" in lines[0]
    assert any(line.startswith("- yaml plugin:") for line in lines)
    assert lines[-1].startswith("hint: known_hosts is not inventory") and "known_hosts.txt" in lines[-1]
    # a few short lines, not 2 kB on one (the temporary directory's path, twice in the first line, not counted)
    assert len(lines) <= 6 and all(len(line.replace(str(directory), "")) <= 200 for line in lines), message
    assert "<class" not in message


def test_an_inline_vaulted_user_that_cannot_be_decrypted_is_an_error_not_another_user(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """doctor probed as the local user when an inline ``!vault`` ansible_user could not be decrypted: the host's
    connection is unknown then, and doctor and the actuator say which host and variable, never the value."""
    directory = tmp_path / "inventory"
    write(
        directory / "hosts.yml",
        f"all:\n  children:\n    workers:\n      hosts:\n        w1:\n          ansible_port: {CLOSED}\n",
    )
    write(
        directory / "host_vars" / "w1.yml", "ansible_host: 127.0.0.1\n" + vault_string("ansible_user", "vaulted-user")
    )
    good = password_file(tmp_path)
    assert read_inventory(directory, vault_password_file=good).hosts[0].user == "vaulted-user"

    wrong = write(tmp_path / "wrong-vault-password", "not-the-password\n", 0o600)
    for password in (wrong, None):
        with pytest.raises(InventoryError, match=r"host w1: ansible_user is vault-encrypted") as refused:
            read_inventory(directory, vault_password_file=password)
        assert "vaulted-user" not in str(refused.value)
    code, checks = doctor_hosts(capsys, [directory], "--vault-password-file", str(wrong))
    assert code == 2
    assert "ansible_user is vault-encrypted" in checks["inventory"]["detail"]
    assert not any(name.startswith("ssh ") for name in checks)  # no probe as a guessed user
