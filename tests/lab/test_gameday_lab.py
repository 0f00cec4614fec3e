"""The short game day: the fleet deployed as production is (``lab/production.py``: production.example's directory
inventory with a vault password file and known_hosts.txt, a primary, two replicas and three Sentinels, per-role ACL
users, TLS, a controller and a standby on different hosts, three worker hosts; all by site.yml), a trace replayed
through it while the faults that matter most follow one another, and the history checker's invariants.

Asserted, as users rely on them: nothing acknowledged is lost, no CAPTCHA is paid twice, no task is solved twice,
none fails, every hostile payload is refused, every fault was injected and the fleet recovered from it, and at the
end the fleet converged (services running = desired, no host draining or locked, every host on its release). The
recovery seconds and P95s are reported, not asserted (bench/README.md carries the full game day's table).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.gameday import SCHEDULES, play
from lab.labctl import unavailable_reason
from lab.production import production_lab
from tests.lab.helpers import controller_available, worker_available

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_the_short_game_day_loses_nothing_pays_nothing_twice_and_converges(tmp_path: Path) -> None:
    for reason in (unavailable_reason(), worker_available(), controller_available()):
        if reason:
            pytest.skip(reason)
    out = tmp_path / "gameday"
    with production_lab() as fleet:
        report = play(fleet, SCHEDULES["short"], out, stable_s=10.0)
        secrets = fleet.secrets()
        outputs = [result.stdout for result in fleet.deployments]
    print(report.table_markdown())
    assert report.acknowledged >= 500, report.to_dict()
    broken = {what: count for what, count in report.total.counts().items() if count}
    assert not broken, report.violations  # lost, paid twice, solved twice, failed, hostile not refused
    assert report.converged, report.violations
    for window in report.windows:
        assert not window.fault.notes, f"{window.fault.name} was not injected: {window.fault.notes}"
        assert window.recovery_s is not None, f"the fleet never recovered from {window.fault.name}"
    evidence = [*outputs, *(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())]
    for secret in secrets:
        assert not any(secret in text for text in evidence), "a secret in a playbook's output, a log or the history"
