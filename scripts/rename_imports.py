#!/usr/bin/env python3
"""Move ``worker`` and ``controller`` into the namespace: ``captcha_fleet.worker``, ``captcha_fleet.controller``.

The folders stay at the top of the repository; only the names change. Re-runnable (a second run changes nothing),
so it can be run again on another branch after a merge:

    python3 scripts/rename_imports.py            # rewrite in place, print the files it changed
    python3 scripts/rename_imports.py --check    # exit 1 when something is left to rewrite (changes nothing)

What it rewrites, in every file git tracks (plus untracked, not ignored files):

- Python: ``from worker.x import ...`` / ``import controller.y`` statements, and string literals naming a real
  module (``"worker.cli"``, ``mock.patch("controller.loop.time")``, ``importorskip("worker.service")``).
- Everything else (pyproject entry points, roles' templates and files, unit files, shell scripts, docs): dotted
  names whose longest prefix is a real module below ``worker/`` or ``controller/`` (``worker.producer.Producer``,
  ``python -m worker.cli``). Config keys such as ``worker.max_slots`` or the logger ``controller.decisions`` are not
  modules and stay as they are.
- The Makefile's mypy line (the folders are type-checked through ``captcha_fleet``), pyproject's package-dir
  mapping, package list and package data (its ``packages.find`` section goes), and the two links
  ``captcha_fleet/worker`` and ``captcha_fleet/controller`` that let the source tree import the new names without an
  install.

The module list is read from the folders at run time, so modules added on another branch are covered.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

NAMESPACE = "captcha_fleet"
PACKAGES = ("worker", "controller")
TEXT_SUFFIXES = {
    ".py", ".toml", ".md", ".rst", ".txt", ".j2", ".yml", ".yaml", ".cfg", ".ini", ".service", ".sh", ".conf",
}  # fmt: skip
TEXT_NAMES = {"Makefile", "Dockerfile"}
SKIP_PARTS = {".git", ".venv", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
SELF = Path("scripts/rename_imports.py")

_PKG = "|".join(PACKAGES)
# `from worker.x import y`, `from controller import z` (not `from captcha_fleet.worker ...`: no dot before).
FROM_IMPORT = re.compile(rf"^(\s*from\s+)({_PKG})(\.[\w.]+)?(\s+import\b)", re.MULTILINE)
# `import worker.x` / `import controller.y as z`
PLAIN_IMPORT = re.compile(rf"^(\s*import\s+)({_PKG})(\.[\w.]+)?(\s+as\s+\w+)?\s*$", re.MULTILINE)
# A dotted name that starts with a package name and is not already qualified (no word character, dot, slash or
# hyphen before it: `captcha_fleet.worker.x`, `roles/worker.env` and `captcha-worker.service` are left alone).
DOTTED = re.compile(rf"(?<![\w./-])({_PKG})((?:\.[A-Za-z_]\w*)+)")


def module_names(root: Path) -> set[str]:
    """Every importable module below the packages, as a dotted name (``worker.cli``, ``controller.sim``)."""
    names: set[str] = set()
    for package in PACKAGES:
        base = root / package
        if not base.is_dir():
            continue
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.add(".".join(parts))
    return names


def names_a_module(dotted: str, modules: set[str]) -> bool:
    """True when a prefix of ``dotted`` with at least two parts is a real module (``worker.cli.main``: yes)."""
    parts = dotted.split(".")
    return any(".".join(parts[:n]) in modules for n in range(len(parts), 1, -1))


def rewrite_dotted(text: str, modules: set[str]) -> str:
    def sub(match: re.Match[str]) -> str:
        dotted = match.group(1) + match.group(2)
        return f"{NAMESPACE}.{dotted}" if names_a_module(dotted, modules) else dotted

    return DOTTED.sub(sub, text)


# The bare package name where a call takes a module name: `resources.files("worker")`, `import_module("controller")`.
BARE_CALL = re.compile(rf"""(\b(?:files|import_module|importorskip|find_spec)\(\s*)(["'])({_PKG})\2""")


def rewrite_python(text: str, modules: set[str]) -> str:
    text = BARE_CALL.sub(lambda m: f"{m.group(1)}{m.group(2)}{NAMESPACE}.{m.group(3)}{m.group(2)}", text)
    text = FROM_IMPORT.sub(lambda m: f"{m.group(1)}{NAMESPACE}.{m.group(2)}{m.group(3) or ''}{m.group(4)}", text)
    text = PLAIN_IMPORT.sub(lambda m: f"{m.group(1)}{NAMESPACE}.{m.group(2)}{m.group(3) or ''}{m.group(4) or ''}", text)
    # Module names inside strings and comments only (mock targets, importlib, docstrings): in code, `worker.queue`
    # may be an attribute of a local variable called `worker`.
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    spans = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.STRING, tokenize.COMMENT):
                start = offsets[tok.start[0] - 1] + tok.start[1]
                end = offsets[tok.end[0] - 1] + tok.end[1]
                spans.append((start, end))
    except (tokenize.TokenError, SyntaxError):
        return text
    for start, end in reversed(spans):
        text = text[:start] + rewrite_dotted(text[start:end], modules) + text[end:]
    return text


def rewrite_makefile(text: str) -> str:
    """The mypy line checks the folders through ``captcha_fleet`` (the links), not under their old names."""

    def fix(line: str) -> str:
        if "mypy" not in line or line.lstrip().startswith("#"):
            return line
        for package in PACKAGES:
            line = re.sub(rf"(?<=\s){package}/?(?=\s|$)", "", line)
        return re.sub(r"[ \t]{2,}", " ", line)

    return "\n".join(fix(line) for line in text.split("\n"))


PACKAGE_DIR = (
    "[tool.setuptools.package-dir]\n"
    "# Installed inside the project's namespace; the folders stay at the top of the repository.\n"
    + "".join(f'"{NAMESPACE}.{p}" = "{p}"\n' for p in PACKAGES)
)


PACKAGES_LINE = "packages = [{}]"
SETUPTOOLS_TABLE = (
    "[tool.setuptools]\n"
    "# packages.find does not see a folder mapped through package-dir under its new name: the list is explicit\n"
    "# (scripts/rename_imports.py writes it from the folders; tests/test_layers.py checks it).\n"
    "{}\n\n"
)


def package_names(root: Path) -> list[str]:
    """captcha_fleet's own packages (not the links) and the mapped folders' packages, under their installed names."""
    names = set()
    for base, prefix in [(root / NAMESPACE, NAMESPACE)] + [(root / p, f"{NAMESPACE}.{p}") for p in PACKAGES]:
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            if base.name == NAMESPACE and rel and rel[0] in PACKAGES:
                continue
            names.add(".".join([prefix, *rel]))
    return sorted(names)


def rewrite_pyproject(text: str, modules: set[str], root: Path) -> str:
    text = rewrite_dotted(text, modules)
    # packages: an explicit list (a folder mapped through package-dir is not found by packages.find)
    text = re.sub(r"(?m)^\[tool\.setuptools\.packages\.find\]\n(?:[^\[\n][^\n]*\n)*\n*", "", text)
    for package in PACKAGES:
        # package data keyed by the old top-level name
        text = re.sub(rf'(?m)^"?{package}"?(\s*=\s*\[)', rf'"{NAMESPACE}.{package}"\1', text)
        # import-linter / mypy module patterns such as "worker.*" or "worker"
        # (not the package-dir mapping's folder names: `"captcha_fleet.worker" = "worker"`)
        text = re.sub(rf'(?<!= ")(?<=")({package})(?=(\.\*)?")', rf"{NAMESPACE}.\1", text)
    if "[tool.setuptools.package-dir]" not in text:
        anchor = "[tool.setuptools.package-data]"
        text = text.replace(anchor, PACKAGE_DIR + "\n" + anchor) if anchor in text else text + "\n" + PACKAGE_DIR
    listing = PACKAGES_LINE.format(", ".join(f'"{name}"' for name in package_names(root)))
    if re.search(r"(?m)^packages = \[.*\]$", text):
        text = re.sub(r"(?m)^packages = \[.*\]$", lambda _: listing, text)
    else:
        anchor = "[tool.setuptools.package-dir]"
        text = text.replace(anchor, SETUPTOOLS_TABLE.format(listing) + anchor)
    return text


def candidate_files(root: Path) -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=root, capture_output=True, check=True, text=True,
        ).stdout  # fmt: skip
        paths = [Path(p) for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = [p.relative_to(root) for p in root.rglob("*") if p.is_file()]
    chosen = []
    for rel in sorted(set(paths)):
        if SKIP_PARTS.intersection(rel.parts) or rel == SELF:
            continue
        if rel.parts[0] == NAMESPACE and len(rel.parts) > 1 and rel.parts[1] in PACKAGES:
            continue  # the same files seen through the links
        if rel.suffix in TEXT_SUFFIXES or rel.name in TEXT_NAMES:
            full = root / rel
            if full.is_file() and not full.is_symlink():
                chosen.append(rel)
    return chosen


def rewrite(rel: Path, text: str, modules: set[str], root: Path) -> str:
    if rel.name == "pyproject.toml":
        return rewrite_pyproject(text, modules, root)
    if rel.name == "Makefile":
        return rewrite_dotted(rewrite_makefile(text), modules)
    if rel.suffix == ".py":
        return rewrite_python(text, modules)
    return rewrite_dotted(text, modules)


def ensure_links(root: Path, check: bool) -> list[str]:
    changed = []
    for package in PACKAGES:
        link = root / NAMESPACE / package
        target = Path("..") / package
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        if link.exists() and not link.is_symlink():
            raise SystemExit(f"{link} exists and is not a link to {target}")
        changed.append(str(link.relative_to(root)))
        if not check:
            if link.is_symlink():
                link.unlink()
            link.symlink_to(target, target_is_directory=True)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="repository root")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a rewrite is pending")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    modules = module_names(root)
    if not modules:
        raise SystemExit(f"no modules found below {', '.join(PACKAGES)} in {root}")
    changed = ensure_links(root, args.check)
    for rel in candidate_files(root):
        path = root / rel
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        new = rewrite(rel, text, modules, root)
        if new != text:
            changed.append(str(rel))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for name in changed:
        print(name)
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
