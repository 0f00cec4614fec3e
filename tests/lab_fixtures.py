"""Lab fixtures: network-namespace hosts with real sshd, a Redis on the lab bridge, and a playbook runner.

Import the fixtures into a test module (``from tests.lab_fixtures import lab  # noqa: F401``); set
``LAB_HOSTS = N`` in the module to choose the number of hosts (default 3). The lab lives for the module and is
torn down afterwards. Tests skip with the reason when the machine cannot host a lab (not root, no
``ip netns``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `lab` is a top-level directory, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from lab.env import (  # noqa: E402  (the set-up shared with bench/, re-exported for the test modules)
    API_SETTINGS,
    LAB_BASE,
    LAB_NAME,
    LAB_SUBNET,
    WHEELHOUSE,
    WORKER_SETTINGS,
    LabEnv,
    LabRedis,
    PlaybookResult,
    Sandbox,
    fresh_lab,
    snapshot_source,
)
from lab.labctl import LabError, unavailable_reason  # noqa: E402

__all__ = [
    "API_SETTINGS",
    "LAB_BASE",
    "LAB_NAME",
    "LAB_SUBNET",
    "REPO_ROOT",
    "WHEELHOUSE",
    "WORKER_SETTINGS",
    "LabEnv",
    "LabRedis",
    "PlaybookResult",
    "Sandbox",
    "controller_available",
    "lab",
    "snapshot_source",
    "worker_available",
]


def worker_available() -> str | None:
    """Why the worker service cannot run yet (None when ``captcha-fleet worker`` exists)."""
    return _subcommand_unavailable("worker/service.py", "worker", "the worker service")


def controller_available() -> str | None:
    """Why the controller cannot run yet (None when ``captcha-fleet controller`` exists)."""
    return _subcommand_unavailable("controller/cli.py", "controller", "the controller")


def _subcommand_unavailable(source: str, subcommand: str, what: str) -> str | None:
    """Why ``captcha-fleet <subcommand>`` cannot run: its ``source`` file is missing or ``--help`` fails."""
    if not (REPO_ROOT / source).exists():
        return f"{source} does not exist yet ({what} is being written)"
    proc = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "captcha-fleet"), subcommand, "--help"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if proc.returncode != 0:
        return f"`captcha-fleet {subcommand} --help` fails: {proc.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[LabEnv]:
    """K lab hosts (module attribute ``LAB_HOSTS``, default 3) and a Redis on the bridge, per module."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    count = int(getattr(request.module, "LAB_HOSTS", 3))
    time_scale = 0.01 if getattr(request.module, "LAB_SANDBOX", False) else None
    try:
        with fresh_lab(count, name=LAB_NAME, subnet=LAB_SUBNET, base=LAB_BASE, sandbox_time_scale=time_scale) as env:
            yield env
    except LabError as exc:
        pytest.fail(f"lab setup failed: {exc}")
