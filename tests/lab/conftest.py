"""The lab tests' fixture and their split between parallel runs.

``lab``: network-namespace hosts with real sshd, a Redis on the lab bridge and (``LAB_SANDBOX = True``) the
sandbox, for one module; ``LAB_HOSTS = N`` in the module chooses the number of hosts (default 3). Pytest finds the
fixture here: a lab test module imports none. Tests skip with the reason when the machine cannot host a lab (not
root, no ``ip netns``). What the modules share besides the fixture is in ``tests/lab/helpers.py``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.env import LAB_BASE, LAB_NAME, LAB_SUBNET, LabEnv, fresh_lab
from lab.labctl import LabError, unavailable_reason


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


def _lab_modules(variable: str) -> set[str] | None:
    """The test-module file names listed (space-separated) in an environment variable; None when unset."""
    value = os.environ.get(variable)
    return None if value is None else set(value.split())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Split the lab tests between parallel lab runs (scripts/run-tests.sh), whole modules at a time.

    ``CAPTCHA_LAB_MODULES`` keeps only the lab tests of the listed modules (``test_x_lab.py ...``, file names in
    this folder); ``CAPTCHA_LAB_SKIP_MODULES`` drops the lab tests of the listed ones. A module's tests share one
    lab, so a module never straddles two runs. Tests without the ``lab`` mark are left alone.
    """
    only, drop = _lab_modules("CAPTCHA_LAB_MODULES"), _lab_modules("CAPTCHA_LAB_SKIP_MODULES")
    if only is None and drop is None:
        return
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        name = Path(str(item.path)).name
        elsewhere = (only is not None and name not in only) or (drop is not None and name in drop)
        (deselected if item.get_closest_marker("lab") is not None and elsewhere else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
