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
