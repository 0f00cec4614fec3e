"""The lab itself: hosts answer over SSH with their own key, are isolated, and teardown removes everything."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lab.env import LAB_BASE, LabEnv
from lab.labctl import Lab, unavailable_reason

pytestmark = pytest.mark.lab
LAB_HOSTS = 2


def ssh(env: LabEnv, host: str, command: str) -> subprocess.CompletedProcess[str]:
    address = next(h.address for h in env.lab.hosts if h.name == host)
    return subprocess.run(
        ["ssh", *env.lab.ssh_args(), f"root@{address}", command],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip


def test_hosts_answer_over_ssh_in_their_own_namespace(lab: LabEnv) -> None:
    for host in lab.lab.hosts:
        proc = ssh(lab, host.name, "ip -o -4 addr show dev eth0")
        assert proc.returncode == 0, proc.stderr
        assert host.address in proc.stdout
    rows = lab.lab.status()
    assert [r["sshd"] and r["ssh_port"] for r in rows] == [True] * LAB_HOSTS


def test_hosts_reach_the_bridge_but_not_the_outside(lab: LabEnv) -> None:
    host = lab.hosts[0]
    assert lab.redis.client().ping()
    reach = ssh(lab, host, f"python3 -c \"import socket; socket.create_connection(('{lab.lab.gateway}', "
                f"{lab.redis.port}), 2)\"")  # fmt: skip
    assert reach.returncode == 0, reach.stderr
    out = ssh(lab, host, "ip route")
    assert "default" not in out.stdout


def test_password_authentication_is_refused(lab: LabEnv) -> None:
    address = lab.lab.hosts[0].address
    proc = subprocess.run(
        ["ssh", "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", f"root@{address}", "true"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert proc.returncode != 0


def test_inventory_is_private_and_lists_every_host(lab: LabEnv) -> None:
    inventory = lab.inventory
    assert inventory.stat().st_mode & 0o077 == 0
    text = inventory.read_text()
    for host in lab.lab.hosts:
        assert host.address in text and host.root in text


def scratch_lab(name: str, subnet: str) -> Lab:
    """A lab of the test's own (not the module's ``lab``: the test brings it up and down itself)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    the_lab = Lab(name=name, subnet=subnet, base=LAB_BASE)
    the_lab.inventory_path = the_lab.dir / "hosts.yml"
    return the_lab


def netns_and_links() -> tuple[str, str]:
    """``ip netns list`` and ``ip -o link``: what is left of lab hosts on the machine."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return netns, links


def test_down_removes_everything() -> None:
    the_lab = scratch_lab("cdown", "10.77.8.0/24")
    the_lab.up(2)
    hosts = the_lab.host_names()
    the_lab.down()
    netns, links = netns_and_links()
    for name in hosts:
        assert name not in netns
        assert name not in links
    assert "cdown-br" not in links
    assert not Path(LAB_BASE / "cdown").exists()
    assert subprocess.run(["pgrep", "-f", "cdown"], capture_output=True, check=False).returncode != 0


def test_fewer_hosts_take_the_extra_ones_away() -> None:
    """``up --hosts 2`` after 3 removes the third host (namespace, sshd, veth, root) instead of orphaning it."""
    the_lab = scratch_lab("cshrink", "10.77.7.0/24")
    try:
        the_lab.up(3)
        third = the_lab.hosts[2]
        the_lab.up(2)
        assert the_lab.host_names() == ["cshrink1", "cshrink2"]
        netns, links = netns_and_links()
        assert third.name not in netns.split() and third.veth_host not in links
        assert not Path(third.root).exists()
        assert Lab.load("cshrink", LAB_BASE).host_names() == ["cshrink1", "cshrink2"]
    finally:
        the_lab.down()


def test_a_password_in_argv_is_refused(tmp_path: Path) -> None:
    from lab.labctl import main

    code = main(["--name", "cargv", "--base", str(tmp_path), "up", "--redis-url", "redis://:s3cret@10.77.6.1:6379/0"])
    assert code == 1
