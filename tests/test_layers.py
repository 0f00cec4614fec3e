"""Every module of captcha_fleet/ sits in a package that one layer of the import-linter contract names.

``make lint`` checks the imports themselves (``lint-imports``); these tests keep the contract covering the tree.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from setuptools import find_packages

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = REPO_ROOT / "captcha_fleet"


def _layered_packages() -> set[str]:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return {name.strip() for layer in contract["layers"] for name in re.split(r"[:|]", layer)}


def test_every_subpackage_of_captcha_fleet_is_a_layer_and_no_module_stands_outside_one() -> None:
    """A module dropped at the top of captcha_fleet/ would escape every layer: only the version lives there."""
    top_modules = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert top_modules == []
    subpackages = {f"captcha_fleet.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages == _layered_packages()


def test_worker_and_controller_are_the_top_level_folders_installed_inside_the_namespace() -> None:
    """The links make the in-tree path the installed one: the folders are found as captcha_fleet's subpackages."""
    for name in ("worker", "controller"):
        link = PACKAGE / name
        assert link.is_symlink()
        assert link.resolve() == REPO_ROOT / name
    found = set(find_packages(str(REPO_ROOT), include=["captcha_fleet*"]))
    assert {"captcha_fleet.worker", "captcha_fleet.controller", "captcha_fleet.controller.actuators"} <= found
    assert not any(name.split(".")[0] in {"worker", "controller", "lab", "tests", "bench"} for name in found)
