"""Lab fixtures: network-namespace hosts with real sshd, a Redis on the lab bridge, and a playbook runner.

Import the fixtures into a test module (``from tests.lab_fixtures import lab  # noqa: F401``); set
``LAB_HOSTS = N`` in the module to choose the number of hosts (default 3). The lab lives for the module and is
torn down afterwards. Tests skip with the reason when the machine cannot host a lab (not root, no
``ip netns``).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import uuid
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
    snapshot_source,
)
from lab.labctl import Lab, LabError, unavailable_reason  # noqa: E402

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
    if not (REPO_ROOT / "worker" / "service.py").exists():
        return "worker/service.py does not exist yet (the worker service is being written)"
    proc = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "captcha-fleet"), "worker", "--help"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if proc.returncode != 0:
        return f"`captcha-fleet worker --help` fails: {proc.stderr.strip()[-300:]}"
    return None


def controller_available() -> str | None:
    """Why the controller cannot run yet (None when ``captcha-fleet controller`` exists)."""
    if not (REPO_ROOT / "controller" / "cli.py").exists():
        return "controller/cli.py does not exist yet (the controller is being written)"
    proc = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "captcha-fleet"), "controller", "--help"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if proc.returncode != 0:
        return f"`captcha-fleet controller --help` fails: {proc.stderr.strip()[-300:]}"
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
    stale = Lab.load(LAB_NAME, LAB_BASE)
    stale.down()  # leftovers of an interrupted run
    the_lab = Lab(name=LAB_NAME, subnet=LAB_SUBNET, base=LAB_BASE, service_user=f"captcha-{LAB_NAME}")
    the_lab.inventory_path = the_lab.dir / "inventory" / "hosts.yml"
    lab_redis: LabRedis | None = None
    sandbox: Sandbox | None = None
    try:
        the_lab.up(count)
        lab_redis = LabRedis(the_lab.gateway, secrets.token_hex(16)).start()
        if getattr(request.module, "LAB_SANDBOX", False):
            sandbox = Sandbox(the_lab.gateway, the_lab.dir).start()
        env = LabEnv(
            lab=the_lab,
            redis=lab_redis,
            key_prefix=f"lab{uuid.uuid4().hex[:6]}",
            secret_key=secrets.token_hex(16),
            source=snapshot_source(the_lab.dir / "source"),
            sandbox=sandbox,
        )
        env.write_inventory()
        yield env
    except LabError as exc:
        pytest.fail(f"lab setup failed: {exc}")
    finally:
        if sandbox is not None:
            sandbox.stop()
        if lab_redis is not None:
            lab_redis.stop()
        the_lab.down()
