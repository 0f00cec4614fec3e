#!/usr/bin/env python3
"""Build the captcha-fleet wheel and every dependency into a wheelhouse (runs on the control machine).

Prints one JSON line: ``{"version", "release", "wheel", "built"}``. ``release`` is ``<version>-<source hash>``
so a changed checkout becomes a new release directory on the hosts even when the version did not move. The
build is skipped when the wheel for this version was already built from the same source. Only the standard
library is used: run it with the Python that matches the hosts' (the wheels must fit their interpreter).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
NOT_SHIPPED = {"tests", "lab", "build", "dist"}
BUILD_REQUIREMENTS = ["setuptools>=68", "wheel"]
# The optional dependency groups a host may install (the controller role asks for "controller").
EXTRAS = ["controller"]


def package_dirs(source: Path) -> list[Path]:
    """Top-level directories that are Python packages (hold an ``__init__.py``), tests excluded."""
    return sorted(
        p for p in source.iterdir() if p.is_dir() and (p / "__init__.py").exists() and p.name not in NOT_SHIPPED
    )


def source_files(source: Path) -> list[Path]:
    """The files a build needs, and the package's links (``captcha_fleet/worker`` -> ``../worker``: setuptools finds
    the top-level service folders through them), kept as links: rglob does not descend into a linked folder."""
    files = [source / "pyproject.toml"]
    files += [source / name for name in ("README.md", "setup.cfg", "setup.py") if (source / name).exists()]
    for pkg in package_dirs(source):
        for path in sorted(pkg.rglob("*")):
            shipped = not SKIP_DIRS.intersection(path.relative_to(source).parts)
            if shipped and (path.is_symlink() or (path.is_file() and path.suffix not in {".pyc", ".pyo"})):
                files.append(path)
    return files


def source_hash(source: Path) -> str:
    digest = hashlib.sha256()
    for path in source_files(source):
        digest.update(str(path.relative_to(source)).encode())
        digest.update(b"\0")
        digest.update(os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def copy_source(source: Path, copy: Path) -> Path:
    """What the build sees: the source files, and the package's links as links (they resolve inside the copy)."""
    copy.mkdir()
    for path in source_files(source):
        target = copy / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            target.symlink_to(os.readlink(path))
        else:
            shutil.copy2(path, target)
    return copy


def project_version(source: Path) -> tuple[str, str]:
    text = (source / "pyproject.toml").read_text(encoding="utf-8")
    name = re.search(r'(?m)^name\s*=\s*"([^"]+)"', text)
    version = re.search(r'(?m)^version\s*=\s*"([^"]+)"', text)
    if not name or not version:
        raise SystemExit(f"{source}/pyproject.toml: no static name/version")
    return name.group(1), version.group(1)


def pip_wheel(python: str, wheelhouse: Path, args: list[str], offline: bool) -> bool:
    cmd = [python, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--wheel-dir", str(wheelhouse),
           "--find-links", str(wheelhouse)]  # fmt: skip
    if offline:
        cmd.append("--no-index")
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0 and not offline:
        sys.stderr.write(proc.stdout + proc.stderr)
    return proc.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, required=True, help="project checkout")
    parser.add_argument("--wheelhouse", type=Path, required=True, help="output directory")
    parser.add_argument("--no-build", action="store_true", help="only report; fail when the wheel is missing")
    args = parser.parse_args()
    source = args.source.resolve()
    wheelhouse = args.wheelhouse.resolve()
    name, version = project_version(source)
    digest = source_hash(source)
    release = f"{version}-{digest[:10]}"
    wheel = wheelhouse / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    stamp = wheelhouse / f".{wheel.name}.source"
    built = False
    fresh = wheel.exists() and stamp.exists() and stamp.read_text(encoding="utf-8").strip() == digest
    if not fresh:
        if args.no_build:
            raise SystemExit(f"{wheel} is missing or stale and --no-build was given")
        wheelhouse.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="captcha-fleet-build-") as tmp:
            copy = copy_source(source, Path(tmp) / "src")
            python = sys.executable
            # Every extra's dependencies too: one wheelhouse serves the workers and the controller.
            project = f"{copy}[{','.join(EXTRAS)}]"
            # Offline first (everything is in the wheelhouse already), then from the index.
            if not pip_wheel(python, wheelhouse, [project], offline=True):
                if not pip_wheel(python, wheelhouse, BUILD_REQUIREMENTS, offline=False):
                    return 1
                if not pip_wheel(python, wheelhouse, [project], offline=False):
                    return 1
        if not wheel.exists():
            raise SystemExit(f"pip did not produce {wheel.name}")
        stamp.write_text(digest + "\n", encoding="utf-8")
        built = True
    print(json.dumps({"version": version, "release": release, "wheel": str(wheel), "built": built}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
