"""``max_services`` is a ceiling on worker processes, with the controller, the local actuator and real workers.

Issue 21: with ``max_services: 2`` the decision said 2 services and 11 worker processes ran, because placement
raised the count to what the slots needed. Here a burst asks for the plan's 16 threads while two services of 3
slots hold 6: the controller must cut the slots, say so in its decision log, and never run a third process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from captcha_fleet.contract.keys import Keys
from captcha_fleet.local_servers.polling import wait_until
from tests.controller_fleet import Fleet

pytestmark = pytest.mark.slow
MAX_SERVICES = 2
SLOTS_PER_SERVICE = 3


@pytest.fixture()
def capped(tmp_path: Path, redis_url: str, sandbox: Any, keys: Keys) -> Iterator[Fleet]:
    """The integration fleet's settings with at most two services of three slots."""
    f = Fleet(tmp_path, redis_url, sandbox.url, keys)
    data = yaml.safe_load(f.config.read_text(encoding="utf-8"))
    data["controller"].update(max_services=MAX_SERVICES, slots_per_service=SLOTS_PER_SERVICE, min_slots=2)
    f.config.write_text(yaml.safe_dump(data), encoding="utf-8")
    try:
        yield f
    finally:
        f.cleanup()


def worker_processes(controller: psutil.Process) -> int:
    """Worker services the controller runs now (its children running ``captcha_fleet.apps.cli worker``)."""
    count = 0
    for child in controller.children(recursive=True):
        try:
            if "worker" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                count += 1
        except psutil.NoSuchProcess:
            continue
    return count


def test_a_burst_never_runs_more_processes_than_max_services(capped: Fleet) -> None:
    controller = psutil.Process(capped.start_controller("a").pid)
    assert wait_until(lambda: len(capped.live_workers()) >= 1, 20)
    t0 = time.time()
    ids = capped.submit(40)
    most_processes, most_beating = 0, 0
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and capped.counts()[2] < len(ids):
        most_processes = max(most_processes, worker_processes(controller))
        most_beating = max(most_beating, len(capped.live_workers()))
        time.sleep(0.1)
    assert capped.counts() == (0, 0, len(ids))  # every task answered: the cut loses nothing
    assert most_processes <= MAX_SERVICES and most_beating <= MAX_SERVICES, (most_processes, most_beating)

    after = [d for d in capped.decisions() if d["at"] >= t0]
    assert all(d["desired_services"] <= MAX_SERVICES for d in after)
    assert all(d["desired_slots"] <= MAX_SERVICES * SLOTS_PER_SERVICE for d in after)
    # The burst asked for more than two services hold, and the decision log says which bound cut it.
    cut = [d for d in after if "max_services" in d["bounds"]]
    assert cut, [(d["rule"], d["desired_slots"], d["recommendation"]) for d in after]
    assert any("max_services 2 x slots_per_service 3 = 6" in d["reason"] for d in cut)
