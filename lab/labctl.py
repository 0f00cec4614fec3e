"""Create, inspect and remove lab hosts: K network namespaces, each with its own sshd, on a private bridge.

Each lab host is a network namespace with one address on a private bridge, its own sshd (key authentication
only, its own host key and pid file, listening on the namespace address) and its own root directory, so the
roles install into ``<lab dir>/<host>/`` and hosts do not share state even though ``ip netns exec`` shares the
filesystem and the hostname. The bridge's host-side address is where the control machine's services (Redis,
the sandbox API) listen for the lab hosts. There is no route out of the namespaces: a lab host reaches
only the bridge subnet and its own loopback.

Usage (as root)::

    python -m lab.labctl up --hosts 3        # writes inventory/lab/hosts.yml
    python -m lab.labctl status
    python -m lab.labctl down

Everything it makes is recorded in ``<lab dir>/lab.json`` and removed by ``down``: namespaces (and their
veths), the bridge, every process running inside the namespaces (sshd, supervisord, workers), the lab's
service user if the roles created it, and the lab directory.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE = Path(os.environ.get("CAPTCHA_LAB_BASE", "/var/lib/captcha-lab"))
DEFAULT_NAME = "clab"
DEFAULT_SUBNET = "10.77.0.0/24"
DEFAULT_INVENTORY = REPO_ROOT / "inventory" / "lab" / "hosts.yml"
DEFAULT_SERVICE_USER = "captcha-lab"
SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
HOST_OFFSET = 10  # host i gets address .(10 + i); the bridge gets .1


class LabError(RuntimeError):
    """The lab cannot be created or inspected; the message says why."""


def run(args: Sequence[str], check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (inside ``netns`` when given), capturing output; raise LabError on failure."""
    argv = ["ip", "netns", "exec", netns, *args] if netns else list(args)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def unavailable_reason() -> str | None:
    """Why a lab cannot be created here, or None when it can (root, ``ip netns``, sshd)."""
    if os.geteuid() != 0:
        return "lab hosts need root (network namespaces, a bridge, sshd)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if not Path(SSHD).exists():
        return f"{SSHD} is missing (apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is missing (apt-get install openssh-client)"
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"`ip netns` is unavailable: {proc.stderr.strip()}"
    return None


@dataclass(frozen=True)
class LabHost:
    """One lab host: its namespace (named like the host), address, veth pair and root directory."""

    name: str
    address: str
    root: str
    veth_host: str
    veth_ns: str

    @property
    def sshd_dir(self) -> Path:
        return Path(self.root) / "etc" / "ssh"

    @property
    def sshd_pidfile(self) -> Path:
        return Path(self.root) / "run" / "sshd.pid"


@dataclass
class Lab:
    """A set of lab hosts under ``base/name``; ``up``/``down`` are idempotent."""

    name: str = DEFAULT_NAME
    subnet: str = DEFAULT_SUBNET
    base: Path = DEFAULT_BASE
    inventory_path: Path = DEFAULT_INVENTORY
    service_user: str = DEFAULT_SERVICE_USER
    hosts: list[LabHost] = field(default_factory=list)

    # --- layout --------------------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        return self.base / self.name

    @property
    def state_file(self) -> Path:
        return self.dir / "lab.json"

    @property
    def key_path(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def control_dir(self) -> Path:
        return self.dir / "cp"

    @property
    def bridge(self) -> str:
        return f"{self.name}-br"[:15]

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        """The bridge's host-side address: where Redis and the sandbox listen for the lab hosts."""
        return str(self.network.network_address + 1)

    def host_names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def ssh_args(self) -> list[str]:
        """ssh options for the control machine: this lab's key and known_hosts, multiplexed connections."""
        return [
            "-o", f"IdentityFile={self.key_path}",
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "ControlMaster=auto",
            "-o", "ControlPersist=120s",
            "-o", f"ControlPath={self.control_dir}/%C",
            "-o", "ConnectTimeout=5",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=2",
            "-o", "BatchMode=yes",
        ]  # fmt: skip

    # --- persistence -----------------------------------------------------------------------------
    def save(self) -> None:
        data = {
            "name": self.name,
            "subnet": self.subnet,
            "inventory_path": str(self.inventory_path),
            "service_user": self.service_user,
            "hosts": [asdict(h) for h in self.hosts],
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, name: str = DEFAULT_NAME, base: Path = DEFAULT_BASE) -> Lab:
        """The lab recorded under ``base/name`` (an empty lab when nothing was recorded)."""
        lab = cls(name=name, base=base)
        if lab.state_file.exists():
            data = json.loads(lab.state_file.read_text(encoding="utf-8"))
            lab.subnet = data["subnet"]
            lab.inventory_path = Path(data["inventory_path"])
            lab.service_user = data.get("service_user", DEFAULT_SERVICE_USER)
            lab.hosts = [LabHost(**h) for h in data["hosts"]]
        return lab

    # --- up --------------------------------------------------------------------------------------
    def up(self, count: int, extra_vars: Mapping[str, Any] | None = None, timeout_s: float = 15.0) -> None:
        """Create ``count`` hosts (keeping existing ones), start their sshd, write the inventory."""
        reason = unavailable_reason()
        if reason:
            raise LabError(reason)
        if len(self.name) > 8 or not self.name.isalnum():
            raise LabError(f"lab name {self.name!r}: use at most 8 letters or digits (it prefixes interface names)")
        if count < 1 or count > 200:
            raise LabError("--hosts must be between 1 and 200")
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.control_dir.mkdir(mode=0o700, exist_ok=True)
        self._ensure_key()
        self._ensure_bridge()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        existing = {h.name: h for h in self.hosts}
        wanted = {f"{self.name}{i}" for i in range(1, count + 1)}
        for name, extra in existing.items():
            if name not in wanted:  # `up --hosts 2` after 3: take the third away instead of orphaning it
                self._remove_host(extra)
        hosts: list[LabHost] = []
        for i in range(1, count + 1):
            name = f"{self.name}{i}"
            host = existing.get(name) or LabHost(
                name=name,
                address=str(self.network.network_address + HOST_OFFSET + i),
                root=str(self.dir / name),
                veth_host=f"{name}-h"[:15],
                veth_ns=f"{name}-n"[:15],
            )
            hosts.append(host)
        self.hosts = hosts
        self.save()
        for host in hosts:
            self._ensure_namespace(host)
            self._ensure_sshd(host)
        self._write_known_hosts()
        for host in hosts:
            wait_for_port(host.address, 22, timeout_s)
        self.write_inventory(extra_vars)

    def _ensure_key(self) -> None:
        if not self.key_path.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"captcha-lab-{self.name}",
                 "-f", str(self.key_path)])  # fmt: skip
        os.chmod(self.key_path, 0o600)
        pub = Path(f"{self.key_path}.pub").read_text(encoding="utf-8")
        auth = self.dir / "authorized_keys"
        auth.write_text(pub, encoding="utf-8")
        os.chmod(auth, 0o600)

    def _ensure_bridge(self) -> None:
        if run(["ip", "link", "show", self.bridge], check=False).returncode != 0:
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
        prefix = self.network.prefixlen
        addrs = run(["ip", "-o", "-4", "addr", "show", "dev", self.bridge]).stdout
        if f" {self.gateway}/{prefix} " not in addrs:
            run(["ip", "addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])

    def _ensure_namespace(self, host: LabHost) -> None:
        netns = run(["ip", "netns", "list"]).stdout.split()
        if host.name not in netns:
            run(["ip", "netns", "add", host.name])
        run(["ip", "link", "set", "lo", "up"], netns=host.name)
        if run(["ip", "link", "show", host.veth_host], check=False).returncode != 0:
            run(["ip", "link", "add", host.veth_host, "type", "veth", "peer", "name", host.veth_ns])
            run(["ip", "link", "set", host.veth_ns, "netns", host.name])
            run(["ip", "link", "set", host.veth_ns, "name", "eth0"], netns=host.name)
        run(["ip", "link", "set", host.veth_host, "master", self.bridge])
        run(["ip", "link", "set", host.veth_host, "up"])
        addrs = run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"], netns=host.name).stdout
        prefix = self.network.prefixlen
        if f" {host.address}/{prefix} " not in addrs:
            run(["ip", "addr", "add", f"{host.address}/{prefix}", "dev", "eth0"], netns=host.name)
        run(["ip", "link", "set", "eth0", "up"], netns=host.name)

    def _ensure_sshd(self, host: LabHost) -> None:
        root = Path(host.root)
        # The skeleton a bare host has (root-owned, 0755), so roles never create /var/lib or /opt themselves.
        for sub in ("etc/ssh", "opt", "run", "tmp", "var/lib", "var/log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(root / sub, 0o755)
        os.chmod(root / "tmp", 0o1777)
        host_key = host.sshd_dir / "ssh_host_ed25519_key"
        if not host_key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(host_key)])
        config = host.sshd_dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"# lab host {host.name}: written by lab/labctl.py",
                    f"ListenAddress {host.address}:22",
                    f"HostKey {host_key}",
                    f"PidFile {host.sshd_pidfile}",
                    f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    "PrintMotd no",
                    "MaxStartups 64:30:128",
                    "MaxSessions 64",
                    "LogLevel ERROR",
                    f"Subsystem sftp {SFTP_SERVER}",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        if self._sshd_alive(host):
            return
        run([SSHD, "-f", str(config), "-E", str(root / "var" / "log" / "sshd.log")], netns=host.name)
        deadline = time.monotonic() + 5
        while not self._sshd_alive(host):
            if time.monotonic() > deadline:
                raise LabError(f"sshd for {host.name} did not start; see {root / 'var/log/sshd.log'}")
            time.sleep(0.05)

    def _sshd_alive(self, host: LabHost) -> bool:
        pid = read_pid(host.sshd_pidfile)
        return pid is not None and pid_alive(pid)

    def _write_known_hosts(self) -> None:
        lines = []
        for host in self.hosts:
            pub = (host.sshd_dir / "ssh_host_ed25519_key.pub").read_text(encoding="utf-8").split()
            lines.append(f"{host.address} {pub[0]} {pub[1]}")
        self.known_hosts.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def write_inventory(self, extra_vars: Mapping[str, Any] | None = None) -> Path:
        """Write the Ansible inventory for this lab (mode 0600: it may hold the lab's Redis URL)."""
        ssh_common = " ".join(
            [
                "-o IdentitiesOnly=yes",
                f"-o UserKnownHostsFile={self.known_hosts}",
                "-o StrictHostKeyChecking=yes",
                "-o ControlMaster=auto",
                "-o ControlPersist=120s",
                "-o ConnectTimeout=5",
                "-o ServerAliveInterval=5",
                "-o ServerAliveCountMax=2",
            ]
        )
        lab_vars: dict[str, Any] = {
            "ansible_user": "root",
            "ansible_become": False,
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": str(self.key_path),
            "ansible_ssh_common_args": ssh_common,
            "ansible_ssh_pipelining": True,
            "ansible_control_path_dir": str(self.control_dir),
            "ansible_remote_tmp": "{{ lab_root }}/tmp/.ansible",
            "lab_name": self.name,
            "lab_gateway": self.gateway,
            # Every role installs under the host's own root; services run under supervisord (no systemd here).
            "supervisord_root": "{{ lab_root }}",
            "supervisord_install_package": False,
            "worker_root": "{{ lab_root }}",
            "worker_user": self.service_user,
            "worker_user_home": str(self.dir),
            "worker_system_packages": [],
            "worker_python": "/usr/bin/python3",
            "worker_service_manager": "supervisord",
            "worker_wheelhouse_transfer": "shared",
            "controller_root": "{{ lab_root }}",
            "controller_user": self.service_user,
            "controller_user_home": str(self.dir),
            "controller_system_packages": [],
            "controller_service_manager": "supervisord",
            "controller_wheelhouse_transfer": "shared",
            "redis_root": "{{ lab_root }}",
            "redis_install_package": False,
            "redis_distro_service": "",  # the machine's own redis-server init script is not a lab host's
            "redis_service_manager": "supervisord",
        }
        lab_vars.update(extra_vars or {})
        hosts = {h.name: {"ansible_host": h.address, "lab_root": h.root} for h in self.hosts}
        inventory = {
            "all": {
                "children": {
                    "lab": {
                        "vars": lab_vars,
                        "children": {
                            "workers": {"hosts": hosts},
                            "controller": {"hosts": {}},
                            "redis": {"hosts": {}},
                        },
                    }
                }
            }
        }
        self.inventory_path.parent.mkdir(parents=True, exist_ok=True)
        text = f"# Generated by lab/labctl.py for the lab {self.name!r}; rewritten by every `up`.\n"
        text += yaml.safe_dump(inventory, sort_keys=False, default_flow_style=False)
        fd = os.open(self.inventory_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(self.inventory_path, 0o600)
        return self.inventory_path

    # --- status ----------------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """One row per host: namespace present, sshd alive, port 22 answering, processes in the namespace."""
        netns = set(run(["ip", "netns", "list"], check=False).stdout.split())
        rows = []
        for host in self.hosts:
            present = host.name in netns
            rows.append(
                {
                    "host": host.name,
                    "address": host.address,
                    "root": host.root,
                    "netns": present,
                    "sshd": self._sshd_alive(host),
                    "ssh_port": port_open(host.address, 22, 0.5) if present else False,
                    "processes": len(netns_pids(host.name)) if present else 0,
                }
            )
        return rows

    # --- faults (for tests) ----------------------------------------------------------------------
    def cut(self, host_name: str) -> None:
        """Cut a host off the network: its veth goes down (processes keep running, unreachable)."""
        host = self._host(host_name)
        run(["ip", "link", "set", host.veth_host, "down"])

    def restore(self, host_name: str) -> None:
        """Undo :meth:`cut`."""
        host = self._host(host_name)
        run(["ip", "link", "set", host.veth_host, "up"])

    def kill(self, host_name: str) -> int:
        """Kill every process in the host's namespace (sshd, supervisord, workers); returns how many."""
        return kill_netns(self._host(host_name).name)

    def revive(self, host_name: str) -> None:
        """Bring a killed host back as a reboot would: its sshd again (nothing of ours until a playbook starts it)."""
        host = self._host(host_name)
        self._ensure_sshd(host)
        wait_for_port(host.address, 22, 15.0)

    def _host(self, name: str) -> LabHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(f"no lab host {name!r} (hosts: {', '.join(self.host_names()) or 'none'})")

    # --- down ------------------------------------------------------------------------------------
    def down(self) -> None:
        """Remove everything ``up`` made (and whatever the roles started inside the hosts)."""
        netns = set(run(["ip", "netns", "list"], check=False).stdout.split())
        kill_netns_all([h.name for h in self.hosts if h.name in netns])  # every host's processes at once
        for host in self.hosts:
            self._remove_host(host)
        for cp in self.control_dir.glob("*") if self.control_dir.exists() else []:
            with contextlib.suppress(OSError):
                subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={cp}", "lab"],
                               capture_output=True, timeout=5, check=False)  # fmt: skip
        run(["ip", "link", "del", self.bridge], check=False)
        self._remove_service_user()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.inventory_path.exists():
            text = self.inventory_path.read_text(encoding="utf-8")
            if f"for the lab {self.name!r}" in text:
                self.inventory_path.unlink()
        self.hosts = []

    def _remove_host(self, host: LabHost) -> None:
        """Every process in the host's namespace, the namespace, its veth and its root directory."""
        netns = set(run(["ip", "netns", "list"], check=False).stdout.split())
        if host.name in netns:
            kill_netns(host.name)
            run(["ip", "netns", "del", host.name], check=False)
        run(["ip", "link", "del", host.veth_host], check=False)
        shutil.rmtree(host.root, ignore_errors=True)

    def _remove_service_user(self) -> None:
        """The roles create the lab's service user in the shared /etc/passwd; take it away again."""
        try:
            pwd.getpwnam(self.service_user)
        except KeyError:
            return
        if any(Path(self.base).glob("*/lab.json")) and self._user_used_by_other_lab():
            return
        run(["userdel", self.service_user], check=False)
        run(["groupdel", self.service_user], check=False)

    def _user_used_by_other_lab(self) -> bool:
        for state in self.base.glob("*/lab.json"):
            if state.parent == self.dir:
                continue
            try:
                data = json.loads(state.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if data.get("service_user") == self.service_user:
                return True
        return False


# --- process helpers ------------------------------------------------------------------------------
def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def netns_pids(netns: str) -> list[int]:
    proc = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def kill_netns(netns: str, grace_s: float = 3.0) -> int:
    """SIGTERM every process in the namespace, then SIGKILL what is left after ``grace_s``."""
    return kill_netns_all([netns], grace_s)


def kill_netns_all(names: Sequence[str], grace_s: float = 3.0) -> int:
    """:func:`kill_netns` for several namespaces at once: one grace period for all of them, not one each."""
    pids = [pid for netns in names for pid in netns_pids(netns)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL if grace_s <= 0 else signal.SIGTERM)
    deadline = time.monotonic() + grace_s

    def left() -> list[int]:
        return [pid for netns in names for pid in netns_pids(netns)]

    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def port_open(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not port_open(host, port, 0.5):
        if time.monotonic() > deadline:
            raise LabError(f"{host}:{port} does not answer after {timeout_s:.0f}s")
        time.sleep(0.05)


# --- CLI ------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    lab = Lab.load(args.name, args.base)
    try:
        _COMMANDS[args.command](lab, args)
    except LabError as exc:
        print(f"labctl: {exc}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labctl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"lab name, prefixes host names (default {DEFAULT_NAME})")
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE, help=f"state directory (default {DEFAULT_BASE})")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_up_parser(sub)
    sub.add_parser("down", help="remove everything the lab made")
    status = sub.add_parser("status", help="show the hosts")
    status.add_argument("--json", action="store_true")
    for name, text in (("cut", "set a host's link down"), ("restore", "set a host's link up again"),
                       ("kill", "kill every process in a host")):  # fmt: skip
        p = sub.add_parser(name, help=text)
        p.add_argument("host")
    return parser


def _add_up_parser(sub: Any) -> None:
    up = sub.add_parser("up", help="create the hosts and write the inventory")
    up.add_argument("--hosts", type=int, default=3, help="number of hosts (default 3)")
    up.add_argument("--subnet", default=None, help=f"private /24 for the bridge (default {DEFAULT_SUBNET})")
    up.add_argument("--inventory", type=Path, default=None, help=f"inventory to write (default {DEFAULT_INVENTORY})")
    up.add_argument("--redis-url", default=None,
                    help="REDIS_URL the workers use, without a password (default: $REDIS_URL, else "
                         "redis://<bridge address>:6379/0); a password goes in $REDIS_URL, never in argv")  # fmt: skip
    up.add_argument("--api-base", default=None, help="CAPTCHAAI_BASE the workers use")
    up.add_argument("--var", action="append", default=[], metavar="KEY=VALUE", help="extra inventory variable")


def _up(lab: Lab, args: argparse.Namespace) -> None:
    if args.subnet:
        if lab.hosts and args.subnet != lab.subnet:
            raise LabError(f"lab {lab.name} already uses {lab.subnet}; run `down` first")
        lab.subnet = args.subnet
    if args.inventory:
        lab.inventory_path = args.inventory.resolve()
    lab.up(args.hosts, _inventory_vars(lab, args))
    print(f"lab {lab.name}: {len(lab.hosts)} hosts on {lab.subnet}, bridge {lab.bridge} ({lab.gateway})")
    print(f"inventory: {lab.inventory_path}")


def _inventory_vars(lab: Lab, args: argparse.Namespace) -> dict[str, Any]:
    """The extra inventory variables ``up`` writes: Redis URL, API base, ``--var``s."""
    extra: dict[str, Any] = {}
    if args.redis_url and urlsplit(args.redis_url).password:
        raise LabError("--redis-url must not carry a password (argv is visible to every user): "
                       "export REDIS_URL instead")  # fmt: skip
    extra["worker_redis_url"] = args.redis_url or os.environ.get("REDIS_URL") or f"redis://{lab.gateway}:6379/0"
    if args.api_base:
        extra["worker_api_base"] = args.api_base
    for item in args.var:
        key, _, value = item.partition("=")
        extra[key] = yaml.safe_load(value)
    return extra


def _down(lab: Lab, _args: argparse.Namespace) -> None:
    lab.down()
    print(f"lab {lab.name}: removed")


def _status(lab: Lab, args: argparse.Namespace) -> None:
    rows = lab.status()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"lab {lab.name}: no hosts")
    else:
        for row in rows:
            print("{host:10} {address:15} netns={netns!s:5} sshd={sshd!s:5} ssh={ssh_port!s:5} "
                  "processes={processes}".format(**row))  # fmt: skip


def _cut(lab: Lab, args: argparse.Namespace) -> None:
    lab.cut(args.host)


def _restore(lab: Lab, args: argparse.Namespace) -> None:
    lab.restore(args.host)


def _kill(lab: Lab, args: argparse.Namespace) -> None:
    print(f"killed {lab.kill(args.host)} processes")


_COMMANDS: dict[str, Callable[[Lab, argparse.Namespace], None]] = {
    "up": _up,
    "down": _down,
    "status": _status,
    "cut": _cut,
    "restore": _restore,
    "kill": _kill,
}


if __name__ == "__main__":
    sys.exit(main())
