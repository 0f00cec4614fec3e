"""The release's build sees the whole package: worker/ and controller/ reach the wheel through captcha_fleet's links.

The release role builds the wheel from a copy of the checkout (``build_wheelhouse.py``); a copy that dropped the two
links built a wheel without ``captcha_fleet.worker`` and ``captcha_fleet.controller``, and every deployed service
failed to spawn.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages

from lab.env import load_script

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD = load_script(REPO_ROOT / "roles" / "release" / "files" / "build_wheelhouse.py")


def test_the_build_copy_holds_the_services_under_the_namespace(tmp_path: Path) -> None:
    copy = BUILD.copy_source(REPO_ROOT, tmp_path / "src")
    found = set(find_packages(str(copy), include=["captcha_fleet*"]))
    assert {"captcha_fleet.worker", "captcha_fleet.controller", "captcha_fleet.controller.strategies"} <= found
    assert (copy / "captcha_fleet" / "worker" / "queue.py").is_file()
    assert (copy / "captcha_fleet" / "worker" / "lua" / "claim_many.lua").is_file()
    assert (copy / "captcha_fleet" / "contract" / "lua" / "expire_results.lua").is_file()


def test_a_change_behind_a_link_changes_the_release(tmp_path: Path) -> None:
    """The source hash (the release's name) covers the linked folders' files, so a worker change is a new release."""
    copy = BUILD.copy_source(REPO_ROOT, tmp_path / "src")
    before = BUILD.source_hash(copy)
    queue = copy / "worker" / "queue.py"
    queue.write_text(queue.read_text(encoding="utf-8") + "\n# changed\n", encoding="utf-8")
    assert BUILD.source_hash(copy) != before
