"""The short game day: the fleet deployed as production is (``lab/production.py``: production.example's directory
inventory with a vault password file and known_hosts.txt, a primary, two replicas and three Sentinels, per-role ACL
users, TLS, a controller and a standby on different hosts, three worker hosts; all by site.yml), a trace replayed
through it while the faults that matter most follow one another, and the history checker's invariants.

Asserted, as users rely on them: nothing acknowledged is lost, no CAPTCHA is paid twice, no task is solved twice,
none fails, every hostile payload is refused, every fault was injected and the fleet recovered from it, and at the
end the fleet converged (services running = desired, no host draining or locked, every host on its release). The
recovery seconds and P95s are reported, not asserted (bench/README.md carries the full game day's table).

Then, on the same deployment (no second lab: a site.yml of its own cost the suite two minutes), what an operator does
after such a day, each as its own Redis user: a hand-run scale.yml, the ansible actuator, a roll that drains,
restarts and gates a host, and decommission.yml; the primary's ACL log shows Redis refused none of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from captcha_fleet.contract.keys import Keys
from lab.env import PlaybookResult
from lab.gameday import SCHEDULES, play, running_services
from lab.labctl import unavailable_reason
from lab.production import ProductionLab, production_lab
from tests.lab.helpers import controller_available, wait_for, worker_available

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_the_short_game_day_loses_nothing_pays_nothing_twice_and_converges(tmp_path: Path) -> None:
    for reason in (unavailable_reason(), worker_available(), controller_available()):
        if reason:
            pytest.skip(reason)
    out = tmp_path / "gameday"
    with production_lab() as fleet:
        report = play(fleet, SCHEDULES["short"], out, stable_s=10.0)
        refused = operator_runs_as_role_users(fleet, tmp_path / "runner")
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
    assert refused == [], refused  # the ACL log: nothing a playbook, the fleet helper or the actuator sent
    evidence = [*outputs, *(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())]
    for secret in secrets:
        assert not any(secret in text for text in evidence), "a secret in a playbook's output, a log or the history"


def instances_of(admin: redis.Redis, fleet: ProductionLab, host: str) -> set[str]:
    return {instance for on, instance in running_services(fleet, admin) if on == host}


def operator_runs_as_role_users(fleet: ProductionLab, data_dir: Path) -> list[Any]:
    """A hand-run scale.yml, the ansible actuator, a roll and decommission.yml on a worker-only host, the
    controllers stopped first (these are the operator's runs, not a race with the leader); the primary's ACL log
    entries meanwhile, less the one refusal expected (a worker's result retention, tried once per process)."""
    from captcha_fleet.controller.actuators.ansible import AnsibleActuator, AnsibleActuatorConfig
    from captcha_fleet.controller.hosts.lock import RedisHostLock

    for host in fleet.controller_hosts:
        fleet.env.supervisorctl(host, "stop", "captcha-controller")
    keys = Keys(fleet.key_prefix)
    admin = fleet.client("admin")
    node = fleet.node_client(fleet.primary())
    node.acl_log_reset()
    host = next(h for h in reversed(fleet.worker_hosts) if h not in fleet.redis_hosts + fleet.controller_hosts)
    results: list[PlaybookResult] = []

    results.append(fleet.playbook("scale.yml", extravars={"captcha_worker_instances": {host: ["1", "a1"]}}, limit=host))
    wait_for(lambda: instances_of(admin, fleet, host) == {"1", "a1"}, 90, "scale.yml's instances")

    running = {h: frozenset(instances_of(admin, fleet, h)) for h in fleet.worker_hosts}
    config = AnsibleActuatorConfig(
        inventory=fleet.inventory, vault_password_file=fleet.vault_password_file, data_dir=data_dir,
        max_services_per_host=4, timeout_s=180,
    )  # fmt: skip
    lock = RedisHostLock(fleet.client("controller"), keys, token="ctl")
    actuator = AnsibleActuator(config, running=running, host_lock=lock)
    try:
        actuator.apply({**running, host: running[host] | {"b1"}})
        assert actuator.wait_idle(240), "the actuator's run did not end"
        assert [run.status for run in actuator.runs] == ["successful"], [vars(run) for run in actuator.runs]
    finally:
        actuator.close()
    wait_for(lambda: "b1" in instances_of(admin, fleet, host), 90, "the actuator's new service")
    assert not admin.exists(keys.host_lock(host)), "the actuator gave the host lock back"

    # The host's gated release marked as another: the roll drains, restarts and gates it on the release it runs.
    (fleet.env.worker_base(host) / "gated-release").write_text("/opt/an-earlier-release\n")
    results.append(fleet.playbook("rolling_update.yml", limit=host))
    gated = (fleet.env.worker_base(host) / "gated-release").read_text().strip()
    assert gated.endswith(fleet.env.current_release(host)), gated
    assert not admin.exists(keys.host_draining(host)) and not admin.exists(keys.host_lock(host))

    results.append(fleet.playbook("decommission.yml", limit=host))
    wait_for(lambda: not instances_of(admin, fleet, host), 60, "no worker left on the decommissioned host")
    assert not admin.exists(keys.host_draining(host))
    for result in results:
        assert result.status == "successful", result.stdout[-3000:]
    return [
        e for e in node.acl_log()
        if not (e.get("username") == "worker" and e.get("context") == "lua"
                and str(e.get("object", "")).endswith(":results:expiry"))
    ]  # fmt: skip
