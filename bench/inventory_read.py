"""How long reading an inventory through Ansible takes (``captcha_fleet.contract.inventory.read_inventory``).

The controller re-reads its inventory every ``ansible_actuator.inventory_refresh_s`` and doctor reads it once; both
pay for one ``ansible-inventory --list`` run. This times it for INI files of 10, 100 and 1000 hosts (written with
host ranges), and for a directory of 100 hosts with group_vars/, host_vars/ and a vault file, and prints the median
and max of ``--repeat`` reads each, with the CPU time of the child.

    .venv/bin/python bench/inventory_read.py --repeat 5 [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from captcha_fleet.contract.inventory import read_inventory  # noqa: E402

VAULT_PASSWORD = "bench-vault-password"


def ini(directory: Path, hosts: int) -> Path:
    path = directory / f"hosts-{hosts}.ini"
    width = len(str(hosts))
    path.write_text(
        f"[workers]\nw[{1:0{width}d}:{hosts:0{width}d}].lan ansible_port=22\n\n[workers:vars]\nansible_user=deploy\n"
    )
    return path


def vaulted_directory(directory: Path, hosts: int) -> tuple[Path, Path]:
    from ansible.parsing.vault import VaultLib, VaultSecret

    lib = VaultLib([("default", VaultSecret(VAULT_PASSWORD.encode()))])
    root = directory / "inventory"
    (root / "group_vars" / "all").mkdir(parents=True)
    (root / "host_vars").mkdir()
    (root / "hosts.yml").write_text(
        "all:\n  children:\n    workers:\n      hosts:\n" + "".join(f"        w{i}: {{}}\n" for i in range(hosts))
    )
    (root / "group_vars" / "all" / "main.yml").write_text("ansible_user: deploy\n")
    (root / "group_vars" / "all" / "vault.yml").write_text(lib.encrypt("api_key: secret\n").decode())
    for i in range(0, hosts, 10):
        (root / "host_vars" / f"w{i}.yml").write_text(f"ansible_host: 10.0.{i // 250}.{i % 250 + 1}\n")
    password = directory / "vault-password"
    password.write_text(VAULT_PASSWORD + "\n")
    return root, password


def count_hosts(path: Path) -> int:
    return len(read_inventory(path).hosts)


def measure(read: Callable[[], int], repeat: int) -> dict[str, Any]:
    seconds: list[float] = []
    cpu: list[float] = []
    hosts = 0
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        hosts = read()
        seconds.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return {
        "hosts": hosts,
        "median_s": round(statistics.median(seconds), 3),
        "max_s": round(max(seconds), 3),
        "child_cpu_s": round(statistics.median(cpu), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for count in (10, 100, 1000):
            path = ini(directory, count)
            rows[f"INI, {count} hosts (a range)"] = measure(partial(count_hosts, path), args.repeat)
        root, password = vaulted_directory(directory, 100)
        rows["directory, 100 hosts, group_vars/host_vars + vault"] = measure(
            lambda: len(read_inventory(root, vault_password_file=password).hosts), args.repeat
        )
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print("| inventory | hosts | median s | max s | ansible-inventory CPU s |")
    print("|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['hosts']} | {row['median_s']} | {row['max_s']} | {row['child_cpu_s']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
