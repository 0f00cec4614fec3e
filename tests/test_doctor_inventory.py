"""Reading Ansible YAML inventories the way Ansible does: groups, inline vars, group_vars/ and host_vars/."""

from __future__ import annotations

from pathlib import Path

import pytest

from captcha_fleet.ansible_inventory import InventoryError, load_inventory, resolve, select

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_lab_format(tmp_path: Path) -> None:
    inventory = write(
        tmp_path / "hosts.yml",
        """
all:
  children:
    lab:
      vars:
        ansible_user: root
        ansible_python_interpreter: /usr/bin/python3
        ansible_ssh_private_key_file: /var/lib/captcha-lab/clab/id_ed25519
        ansible_ssh_common_args: -o IdentitiesOnly=yes -o UserKnownHostsFile=/var/lib/captcha-lab/clab/known_hosts
          -o StrictHostKeyChecking=yes -o ConnectTimeout=5
        ansible_remote_tmp: '{{ lab_root }}/tmp/.ansible'
      children:
        workers:
          hosts:
            clab1:
              ansible_host: 10.77.0.11
              lab_root: /var/lib/captcha-lab/clab/clab1
        controller:
          hosts: {}
""",
    )
    (host,) = load_inventory(inventory)
    assert host.name == "clab1"
    assert host.address == "10.77.0.11"
    assert host.port == 22
    assert host.user == "root"
    assert host.key_file == "/var/lib/captcha-lab/clab/id_ed25519"
    assert host.known_hosts_files == ("/var/lib/captcha-lab/clab/known_hosts",)
    assert host.strict_host_key_checking is True
    assert host.python == "/usr/bin/python3"
    assert set(host.groups) == {"all", "lab", "workers"}


def test_precedence_group_vars_dirs_and_vault(tmp_path: Path) -> None:
    inventory = write(
        tmp_path / "hosts.yml",
        """
all:
  vars:
    ansible_user: inline-all
    ansible_port: 2200
  children:
    workers:
      vars:
        ansible_user: inline-workers
      hosts:
        w[01:03].lan:
        special:
          ansible_host: 10.0.0.9
          ansible_port: "{{ special_port }}"
          ansible_password: !vault |
            $ANSIBLE_VAULT;1.1;AES256
            3133
""",
    )
    write(tmp_path / "group_vars" / "all" / "main.yml", "ansible_user: dir-all\nspecial_port: 2299\n")
    write(tmp_path / "group_vars" / "all" / "vault.yml", "$ANSIBLE_VAULT;1.1;AES256\n6162\n")
    write(tmp_path / "group_vars" / "workers.yml", "ansible_user: dir-workers\n")
    write(
        tmp_path / "host_vars" / "w02.lan.yml",
        "ansible_user: w2-user\nansible_ssh_common_args: -o StrictHostKeyChecking=no\n",
    )
    hosts = {h.name: h for h in load_inventory(inventory)}
    assert list(hosts) == ["w01.lan", "w02.lan", "w03.lan", "special"]
    assert hosts["w01.lan"].user == "dir-workers"  # group_vars/ beats inline group vars, deeper group wins
    assert hosts["w01.lan"].address == "w01.lan"
    assert hosts["w01.lan"].port == 2200
    assert hosts["w02.lan"].user == "w2-user"
    assert hosts["w02.lan"].strict_host_key_checking is False
    assert hosts["special"].port == 2299  # {{ special_port }} resolved
    assert hosts["special"].password is None  # a !vault value is unreadable here


def test_production_example_parses() -> None:
    hosts = load_inventory(REPO / "inventory" / "production.example" / "hosts.yml")
    assert {h.name for h in select(hosts, "workers")} == {
        "worker1.example.internal",
        "worker2.example.internal",
        "worker3.example.internal",
    }
    assert all(h.user == "deploy" for h in hosts)  # from group_vars/all/main.yml; vault.yml skipped
    assert [h.name for h in select(hosts, "ctl1.example.internal,redis")] == [
        "redis1.example.internal",
        "ctl1.example.internal",
    ]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("all:\n  hosts: [a]\n", "all.hosts"),
        ("all:\n  children:\n    web:\n      host: {}\n", "all.web: unknown key(s) host"),
        ("- a\n", "top level"),
        ("all: {hosts: {a: {ansible_port: twenty}}}\n", "ansible_port"),
        ("all: [\n", "not valid YAML"),
    ],
)
def test_errors_name_the_place(tmp_path: Path, text: str, where: str) -> None:
    inventory = write(tmp_path / "hosts.yml", text)
    with pytest.raises(InventoryError, match=r".*") as info:
        load_inventory(inventory)
    assert where in str(info.value)


def test_resolve_leaves_what_it_cannot_render() -> None:
    variables = {"a": "x", "b": "{{ a }}-y"}
    assert resolve("{{ b }}", variables) == "x-y"
    assert resolve("{{ missing }}", variables) == "{{ missing }}"
    assert resolve("{{ a | upper }}", variables) == "{{ a | upper }}"
