"""A dynamic inventory that changes under a running controller, over real SSH to lab hosts.

An executable inventory script names two of the three lab hosts; the controller (leader loop, ansible actuator,
inventory re-read every second) runs a service on each. Then the script drops one host and adds the third: the
service on the dropped host (busy with tasks) is drained and stopped with no task lost, a service starts on the
new host, the dropped host is forgotten, and the decision log says each of these. doctor, the actuator and
``ansible-inventory`` then name the same hosts.

Run it under the lab lock: ``flock /tmp/captcha-lab.lock .venv/bin/pytest tests/lab/test_inventory_lab.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from captcha_fleet.apps.cli import main
from captcha_fleet.contract.keys import Keys
from captcha_fleet.controller.actuators.ansible import AnsibleActuator, AnsibleActuatorConfig, read_actuator_inventory
from captcha_fleet.controller.inventory_refresh import InventoryRefresher
from lab.env import LabEnv
from tests.lab import helpers
from tests.lab.helpers import heartbeat_instances as running
from tests.lab.helpers import worker_available

if TYPE_CHECKING:
    from captcha_fleet.controller.loop import Controller
    from captcha_fleet.controller.settings import ControllerSettings

pytestmark = [pytest.mark.lab, pytest.mark.slow]
LAB_HOSTS = 3
LAB_SANDBOX = True
# The controller: section of the test, two services of two slots each, one per host.
CONTROLLER_SECTION = {
    "interval_s": 0.5,
    "plan_threads": 100,
    "min_slots": 2,
    "max_slots": 4,
    "slots_per_service": 2,
    "min_services": 2,
    "max_services": 2,
    "service_headroom": 0.0,
    "leader_ttl_s": 5.0,
    "drain_timeout_s": 15.0,
    "instances_per_host": 1,
}
wait_for = partial(helpers.wait_for, interval_s=0.3)  # this module's pace


def cloud_script(env: LabEnv, directory: Path) -> tuple[Path, Path]:
    """A dynamic inventory over the lab: the hosts named in a JSON file, with the lab's own variables."""
    data = directory / "cloud-hosts.json"
    script = directory / "cloud.py"
    script.write_text(
        f"""#!{sys.executable}
import json
import yaml

lab = yaml.safe_load(open({str(env.inventory)!r}))["all"]["children"]["lab"]
everything = lab["children"]["workers"]["hosts"]
names = [n for n in json.load(open({str(data)!r})) if n in everything]
print(json.dumps({{
    "lab": {{"vars": lab["vars"], "children": ["workers"]}},
    "workers": {{"hosts": names}},
    "_meta": {{"hostvars": {{n: everything[n] for n in names}}}},
}}))
"""
    )
    script.chmod(0o700)
    return script, data


def inventory_log(client: redis.Redis, keys: Keys) -> dict[str, list[str]]:
    """The roster changes the decision log recorded, oldest first, by heading (added, retiring, forgotten)."""
    log: dict[str, list[str]] = {}
    for raw in reversed(client.lrange(keys.decisions, 0, -1)):
        for heading, names in (json.loads(raw).get("inventory") or {}).items():
            log.setdefault(heading, []).extend(names)
    return log


def test_hosts_join_and_leave_a_running_controller(lab: LabEnv, capsys: pytest.CaptureFixture[str]) -> None:
    reason = worker_available()
    if reason:
        pytest.skip(reason)
    from captcha_fleet.controller.settings import controller_settings

    h1, h2, h3 = lab.hosts
    provision_without_workers(lab)

    script, data = cloud_script(lab, lab.lab.dir)
    data.write_text(json.dumps([h1, h2]))
    settings = controller_settings(CONTROLLER_SECTION)
    client = lab.redis.client()
    keys = Keys(lab.key_prefix)
    config = AnsibleActuatorConfig(
        inventory=script,
        data_dir=lab.lab.dir / "runner",
        max_services_per_host=1,
        timeout_s=60,
        replace_failed=False,  # the control loop re-places services itself, as the CLI sets it
    )
    leaked: list[str] = []
    actuator = AnsibleActuator(config, inspect_artifacts=partial(find_secrets, lab, leaked))
    refresher = InventoryRefresher(partial(read_actuator_inventory, config), actuator.follow_inventory, 1.0)
    controller = lab_controller(client, keys, settings, actuator)
    stop = threading.Event()
    loop = threading.Thread(target=controller.run, args=(stop,), daemon=True)
    refresher.start()
    loop.start()
    try:
        wait_for(lambda: running(lab, h1) and running(lab, h2), 120, f"a service on {h1} and on {h2}")
        assert not running(lab, h3)
        (gone,) = running(lab, h1)
        from captcha_fleet.contract.tasks import NewTask
        from captcha_fleet.worker.producer import Producer

        ids = Producer(client, keys).submit_many(NewTask("base64", {"body": "aGVsbG8="}) for _ in range(400))
        wait_for(lambda: any(b.busy > 0 for b in lab.heartbeats(h1)), 30, f"{h1} holding tasks")

        data.write_text(json.dumps([h2, h3]))  # the cloud: h1 went away (busy), h3 came
        wait_for(lambda: running(lab, h3), 120, f"a service on the new host {h3}")
        wait_for(lambda: not running(lab, h1), 120, f"the service on {h1} drained and stopped")
        wait_for(lambda: h1 not in actuator.observe().hosts, 60, f"{h1} forgotten")
        # the decision log says so with the next evaluation (the roster change is recorded by the step after it)
        wait_for(lambda: "forgotten" in inventory_log(client, keys), 30, f"{h1} forgotten in the decision log")
        wait_for(lambda: not lab.heartbeats(h1), 30, f"no heartbeat left on {h1}")
        status = lab.programs(h1)
        assert status.get(f"captcha-worker-{gone}", ("", 0))[0] != "RUNNING", status
        assert set(actuator.observe().hosts) == {h2, h3}
        wait_for(lambda: all(r is not None for r in client.hmget(keys.results, ids)), 120, "every task solved")
        assert all(json.loads(r)["status"] == "success" for r in client.hmget(keys.results, ids) if r is not None)
    finally:
        stop.set()
        loop.join(timeout=30)
        refresher.stop()
    assert leaked == [], f"secrets in runner artifacts: {leaked}"
    # the actuator here makes its scratch inventories in this process's temporary directory (run-tests.sh gives
    # each lab run its own, so the deployed controllers of another run, which use /tmp, do not count)
    assert not list(Path(tempfile.gettempdir()).glob("scale-inventory-*")), "the retiring hosts' inventory was left"
    assert inventory_log(client, keys) == {"added": [h3], "retiring": [h1], "forgotten": [h1]}
    assert_drained_before_stopped(client, keys, f"{h1}:{gone}")
    assert_same_hosts_everywhere(lab, script, capsys, {h2, h3})
    client.close()


def provision_without_workers(env: LabEnv) -> None:
    """site.yml on every lab host, then scale.yml with no instance: the hosts are ready and no worker runs."""
    site = env.run_playbook("site.yml")
    assert site.status == "successful", site.stdout[-3000:]
    stopped = env.run_playbook("scale.yml", extravars={"captcha_worker_instances": {h: [] for h in env.hosts}})
    assert stopped.status == "successful", stopped.stdout[-3000:]
    wait_for(lambda: not any(running(env, h) for h in env.hosts), 30, "no worker left")


def find_secrets(env: LabEnv, leaked: list[str], private: Path) -> None:
    """After each run, before its data dir goes: no secret of the lab in the runner's files."""
    for path in private.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            if env.redis.password in text or env.secret_key in text:
                leaked.append(str(path.relative_to(private)))


def lab_controller(
    client: redis.Redis, keys: Keys, settings: ControllerSettings, actuator: AnsibleActuator
) -> Controller:
    """The controller as the CLI builds it: the queue-model policy, signals from Redis, the leader lock."""
    from captcha_fleet.controller.leader import LeaderLock
    from captcha_fleet.controller.loop import Controller
    from captcha_fleet.controller.sources.balance import BalanceTracker
    from captcha_fleet.controller.sources.redis_signals import RedisSignalSource
    from captcha_fleet.controller.strategies.registry import make_policy

    return Controller(
        client, keys, settings, make_policy("queue-model", settings), RedisSignalSource(
            client, keys, settings, BalanceTracker(None)), actuator,
        LeaderLock(client, keys.controller_leader, settings.leader_ttl_s),
    )  # fmt: skip


def assert_drained_before_stopped(client: redis.Redis, keys: Keys, wid: str) -> None:
    entries = [json.loads(raw) for raw in reversed(client.lrange(keys.decisions, 0, -1))]
    drained_at = next(i for i, d in enumerate(entries) if d.get("targets", {}).get(wid) == 0)
    stopped_at = next(i for i, d in enumerate(entries) if wid in d.get("stopped", []))
    assert drained_at <= stopped_at, "the service is drained (target 0) before it is stopped"


def assert_same_hosts_everywhere(
    env: LabEnv, script: Path, capsys: pytest.CaptureFixture[str], hosts: set[str]
) -> None:
    """The same host set in ansible-inventory as in doctor (over real SSH)."""
    graph = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(script), "--graph", "workers"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert {line.split("--", 1)[1] for line in graph.splitlines() if "|--" in line and "@" not in line} == hosts
    code = main(["doctor", "--json", "-i", str(script), "--redis-url", env.redis.url, "--timeout", "5"])
    assert code in (0, 1)
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert {n.removeprefix("ssh ") for n in checks if n.startswith("ssh ")} == hosts
    assert all(checks[f"ssh {h}"]["status"] == "ok" for h in hosts), checks
