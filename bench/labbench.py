"""Shared by the lab benchmarks (``deploy_latency.py``, ``rolling_updates.py``): the lab, the controller host's
environment and files, and the grep of those files for the secrets.

The benchmark process plays the controller host: its environment holds ``REDIS_URL`` (with the password) and
``CAPTCHAAI_KEY`` as the deployed controller's does, and its temporary files go to ``<workdir>/tmp`` (``TMPDIR``),
so every file it or its children (ansible-runner, ansible-playbook, ssh) write is under ``<workdir>`` or
``~/.ansible``, and :func:`scan_for_secrets` reads them all.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `lab` is a top-level directory, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from lab.env import LAB_BASE, WHEELHOUSE, LabEnv, fresh_lab  # noqa: E402
from lab.labctl import Lab, unavailable_reason  # noqa: E402

# The defaults of this checkout's lab; the same environment variables as the lab tests.
DEFAULT_LAB_NAME = os.environ.get("CAPTCHA_LAB_NAME", "ctestc")
DEFAULT_LAB_SUBNET = os.environ.get("CAPTCHA_LAB_SUBNET", "10.77.11.0/24")


def lab_unavailable(bench: str) -> bool:
    """Whether this machine cannot run a lab (no root, no network namespaces, ...), said on stderr as ``bench``:
    a lab benchmark then exits 2 instead of failing half-way through."""
    reason = unavailable_reason()
    if reason:
        print(f"{bench}: {reason}", file=sys.stderr)
    return reason is not None


def add_lab_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lab-name", default=DEFAULT_LAB_NAME, help="lab name (env CAPTCHA_LAB_NAME)")
    parser.add_argument("--lab-subnet", default=DEFAULT_LAB_SUBNET, help="lab /24 (env CAPTCHA_LAB_SUBNET)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards (debugging)")


@dataclass
class SecretScan:
    """What :func:`scan_for_secrets` read and found (file -> names of the secrets in it)."""

    files: int = 0
    bytes: int = 0
    hits: dict[str, list[str]] = field(default_factory=dict)

    def add(self, other: SecretScan) -> None:
        self.files += other.files
        self.bytes += other.bytes
        for path, names in other.hits.items():
            self.hits.setdefault(path, []).extend(names)

    def summary(self) -> dict[str, Any]:
        return {"files": self.files, "bytes": self.bytes, "hits": self.hits}


def scan_for_secrets(
    roots: Iterable[Path],
    needles: dict[str, str],
    since: float = 0.0,
    exclude: Sequence[Path] = (),
    max_bytes: int = 64 << 20,
) -> SecretScan:
    """Every regular file under ``roots`` modified at or after ``since`` (except under ``exclude``), read as bytes
    and searched for each secret (name -> value). Returns the counts and the files with a hit (never the secret)."""
    scan = SecretScan()
    excluded = [p.resolve() for p in exclude]
    encoded = {name: value.encode() for name, value in needles.items()}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, _dirs, files in os.walk(root):
            base = Path(dirpath)
            if any(base.resolve().is_relative_to(e) for e in excluded):
                continue
            for name in files:
                path = base / name
                try:
                    st = path.lstat()
                    if not path.is_file() or path.is_symlink() or st.st_mtime < since or st.st_size > max_bytes:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                scan.files += 1
                scan.bytes += len(data)
                found = [n for n, v in encoded.items() if v in data]
                if found:
                    scan.hits[str(path)] = found
    return scan


@dataclass
class BenchLab:
    """A lab with Redis and the sandbox on its bridge, provisioned by site.yml, and the controller host's dirs."""

    env: LabEnv
    workdir: Path  # the controller host's files: runner data dir, logs, temporary files
    started: float
    needles: dict[str, str]
    provision_s: float = 0.0
    scan: SecretScan = field(default_factory=SecretScan)
    site_scan: SecretScan = field(default_factory=SecretScan)

    def inspect_site(self, path: Path) -> None:
        """Grep site.yml's runner data dir (the operator's provisioning run, reported apart)."""
        self.site_scan.add(scan_for_secrets([path], self.needles))

    def inspect(self, path: Path) -> None:
        """Grep one runner data dir before it is removed (the actuator's ``inspect_artifacts`` hook)."""
        self.scan.add(scan_for_secrets([path], self.needles))

    def final_scan(self) -> SecretScan:
        """The runner dirs seen so far plus everything left under the workdir and ~/.ansible since the start."""
        total = SecretScan()
        total.add(self.scan)
        total.add(
            scan_for_secrets(
                [self.workdir, Path.home() / ".ansible"],
                self.needles,
                since=self.started - 1,
                # the Redis server's own config holds its password (the Redis host's file, not the controller's)
                exclude=[self.env.redis.dir],
            )
        )
        return total


@contextmanager
def bench_lab(
    name: str,
    subnet: str,
    hosts: int,
    time_scale: float,
    inventory_vars: dict[str, Any],
    keep: bool = False,
    private_wheelhouse: bool = False,
) -> Iterator[BenchLab]:
    """Bring a lab of ``hosts`` up, provision it with site.yml (no worker instance unless ``inventory_vars`` says),
    and yield it; tear everything down afterwards (unless ``keep``). ``private_wheelhouse`` copies the shared
    wheelhouse's dependency wheels into the workdir, so the releases this run builds stay out of the shared one."""
    started = time.time()
    workdir = LAB_BASE / name / "controller-host"
    if private_wheelhouse:
        inventory_vars = {**inventory_vars, "worker_wheelhouse_dir": str(workdir / "wheelhouse")}

    def controller_host_dirs(_lab: Lab) -> None:
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)
        os.environ["TMPDIR"] = str(workdir / "tmp")
        tempfile.tempdir = None  # re-read TMPDIR
        if private_wheelhouse:
            shutil.copytree(WHEELHOUSE, workdir / "wheelhouse", ignore=shutil.ignore_patterns("captcha_fleet-*"))

    try:
        with fresh_lab(
            hosts, name=name, subnet=subnet, key_prefix="bench", sandbox_time_scale=time_scale,
            inventory_vars=inventory_vars, keep=keep, after_up=controller_host_dirs,
        ) as env:  # fmt: skip
            bench = BenchLab(
                env=env,
                workdir=workdir,
                started=started,
                needles={"api_key": env.secret_key, "redis_password": env.redis.password},
            )
            t0 = time.monotonic()
            site = env.run_playbook("site.yml", timeout_s=1200, inspect=bench.inspect_site)
            bench.provision_s = time.monotonic() - t0
            if site.status != "successful":
                raise RuntimeError(f"site.yml: {site.status}\n{site.stdout[-3000:]}")
            # From here on this process is the controller host: its environment as the controller role writes it
            # (controller.env: REDIS_URL with the password, CAPTCHAAI_KEY); whatever it starts inherits it, so a
            # leak into a file would show. (site.yml above is the operator's provisioning run, scanned apart.)
            os.environ["REDIS_URL"] = env.redis.url
            os.environ["CAPTCHAAI_KEY"] = env.secret_key
            bench.started = time.time()
            yield bench
    finally:
        os.environ.pop("REDIS_URL", None)
        os.environ.pop("CAPTCHAAI_KEY", None)


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
