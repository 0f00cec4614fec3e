"""Every module of captcha_fleet/ sits in one layer of the import-linter contract (``make lint`` checks the imports)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_every_captcha_fleet_module_is_in_a_layer() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    listed = {name.strip() for layer in contract["layers"] for name in re.split(r"[:|]", layer)}
    package = REPO_ROOT / "captcha_fleet"
    modules = {
        f"captcha_fleet.{p.stem if p.is_file() else p.name}"
        for p in package.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())
    }
    assert modules - listed == set()
    assert listed - modules == set()


def test_the_package_list_names_every_package_under_its_installed_name() -> None:
    """pyproject lists the packages (worker/ and controller/ are mapped into captcha_fleet, find cannot see them)."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = config["tool"]["setuptools"]
    mapped = setuptools["package-dir"]
    expected = {"captcha_fleet"}
    roots = [(REPO_ROOT / "captcha_fleet", "captcha_fleet")] + [(REPO_ROOT / d, name) for name, d in mapped.items()]
    for base, prefix in roots:
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            if prefix == "captcha_fleet" and rel and f"captcha_fleet.{rel[0]}" in mapped:
                continue
            expected.add(".".join([prefix, *rel]))
    assert set(setuptools["packages"]) == expected
