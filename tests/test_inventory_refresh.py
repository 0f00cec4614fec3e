"""The controller follows a re-read inventory: hosts join, vanished hosts retire and are forgotten, and it says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis
import yaml

from captcha_fleet.contract.inventory import read_inventory
from captcha_fleet.contract.keys import Keys
from captcha_fleet.controller.hosts.roster import follow_inventory, forget_retired, retired_source
from captcha_fleet.controller.hosts.state import HostState
from captcha_fleet.local_servers.polling import wait_until

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    assert wait_until(predicate, timeout_s, 0.1), f"timed out after {timeout_s:g}s waiting for {what}"


def test_roster_adds_retires_takes_back_and_forgets() -> None:
    hosts = {"a": HostState("a", 2, running=frozenset({"1"})), "b": HostState("b", 2)}
    change = follow_inventory(hosts, ["b", "c"], max_services=3)
    assert change.to_dict() == {"added": ["c"], "retiring": ["a"]}
    assert hosts["a"].retiring and hosts["c"].max_services == 3 and not hosts["b"].retiring
    # still running a service: kept until it is stopped
    assert not forget_retired(hosts, {"a": frozenset({"1"})})
    assert not forget_retired(hosts, {})
    hosts["a"] = HostState("a", 2, retiring=True)
    assert forget_retired(hosts, {"a": frozenset()}).to_dict() == {"forgotten": ["a"]}
    assert set(hosts) == {"b", "c"}
    # a host that comes back before it is forgotten is taken back as it is
    follow_inventory(hosts, ["c"], max_services=3)
    assert follow_inventory(hosts, ["b", "c"], max_services=3).to_dict() == {"returned": ["b"]}
    assert not follow_inventory(hosts, ["b", "c"], max_services=3)


def test_a_retiring_host_stays_addressable_with_its_own_vars(tmp_path: Path) -> None:
    """The retired-host source, beside the live inventory, gives Ansible the host back in its groups."""
    from ansible.parsing.vault import VaultLib, VaultSecret

    password = tmp_path / "vault-password"
    password.write_text("pw-9\n")
    inline = VaultLib([("default", VaultSecret(b"pw-9"))]).encrypt("inline-secret-77").decode()
    live = tmp_path / "hosts.yml"
    live.write_text(
        "all:\n  children:\n    lab:\n      vars: {worker_root: /srv/lab}\n      children:\n"
        "        workers:\n          hosts:\n            w1: {ansible_host: 10.0.0.1}\n"
    )
    before = tmp_path / "before.yml"
    token = "".join("                api_token: !vault |\n" if i < 0 else f"                  {line}\n"
                    for i, line in enumerate(["", *inline.splitlines()], start=-1))  # fmt: skip
    before.write_text(
        "all:\n  children:\n    lab:\n      vars: {worker_root: /srv/lab}\n      children:\n"
        "        workers:\n          hosts:\n            w1: {ansible_host: 10.0.0.1}\n"
        "            w2:\n                ansible_host: 10.0.0.2\n                lab_root: /r/w2\n" + token
    )
    old = {h.name: h for h in read_inventory(before, export=True, vault_password_file=password).hosts}
    source = retired_source([old["w2"]], tmp_path / "retiring.yml")
    assert source.stat().st_mode & 0o777 == 0o600
    assert "inline-secret-77" not in source.read_text()  # the inline vault value stays encrypted
    both = read_inventory([live, source], vault_password_file=password)
    assert set(both.names("workers")) == {"w1", "w2"}
    w2 = next(h for h in both.hosts if h.name == "w2")
    assert w2.address == "10.0.0.2"
    assert w2.variables["worker_root"] == "/srv/lab"  # its group's vars, from the live inventory
    assert w2.variables["lab_root"] == "/r/w2"  # its own, from the retired source


# --- the controller process: SIGHUP and the interval ------------------------------------------------------
def dynamic_inventory(tmp_path: Path) -> tuple[Path, Path]:
    """An executable inventory script whose hosts come from a JSON file the test rewrites."""
    data = tmp_path / "cloud-hosts.json"
    script = tmp_path / "cloud.py"
    script.write_text(
        f"""#!{sys.executable}
import json
names = json.load(open({str(data)!r}))
print(json.dumps({{"workers": {{"hosts": names}},
    "_meta": {{"hostvars": {{n: {{"ansible_host": "127.0.0.1", "ansible_port": 9}} for n in names}}}}}}))
"""
    )
    script.chmod(0o755)
    return script, data


def decisions(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(keys.decisions, 0, -1)]


def inventory_events(client: redis.Redis, keys: Keys) -> dict[str, list[str]]:
    merged: dict[str, list[str]] = {}
    for entry in reversed(decisions(client, keys)):
        for heading, names in (entry.get("inventory") or {}).items():
            merged.setdefault(heading, []).extend(names)
    return merged


def test_controller_rereads_the_inventory_on_sighup(redis_url: str, r: redis.Redis, tmp_path: Path) -> None:
    script, data = dynamic_inventory(tmp_path)
    data.write_text(json.dumps(["vm-a", "vm-b"]))
    keys = Keys("inv")
    fleet = tmp_path / "fleet.yml"
    fleet.write_text(
        yaml.safe_dump(
            {
                "key_prefix": keys.prefix,
                "controller": {"interval_s": 0.3, "leader_ttl_s": 2.0},
                "ansible_actuator": {
                    "inventory": str(script),
                    "data_dir": str(tmp_path / "runner"),
                    "max_services_per_host": 0,  # no room: nothing is started, this is about the host set
                    "inventory_refresh_s": 3600,
                },
            }
        )
    )
    log = tmp_path / "controller.log"
    env = {**os.environ, "REDIS_URL": redis_url}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "captcha-fleet"), "controller", "--config", str(fleet),
             "--actuator", "ansible"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:

        def hosts() -> set[str]:
            return {k.decode() if isinstance(k, bytes) else str(k) for k in r.hkeys(keys.hosts)}

        wait_for(lambda: hosts() == {"vm-a", "vm-b"}, 30, "the first inventory in the status hash")
        data.write_text(json.dumps(["vm-b", "vm-c"]))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "forgotten" in inventory_events(r, keys), 30, "vm-a forgotten after SIGHUP")
        events = inventory_events(r, keys)
        assert events == {"added": ["vm-c"], "retiring": ["vm-a"], "forgotten": ["vm-a"]}
        wait_for(lambda: hosts() == {"vm-b", "vm-c"}, 10, "the new inventory in the status hash")
        assert proc.poll() is None, "SIGHUP must not stop the controller"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "host vm-c joined the inventory" in text and "host vm-a left the inventory" in text


def test_rereads_on_the_interval_and_a_failed_read_keeps_the_hosts(tmp_path: Path) -> None:
    from captcha_fleet.controller.actuators.ansible import (
        AnsibleActuator,
        AnsibleActuatorConfig,
        read_actuator_inventory,
    )
    from captcha_fleet.controller.inventory_refresh import InventoryRefresher

    script, data = dynamic_inventory(tmp_path)
    data.write_text(json.dumps(["vm-a", "vm-b"]))
    config = AnsibleActuatorConfig(inventory=script, data_dir=tmp_path / "runner")
    actuator = AnsibleActuator(config)
    refresher = InventoryRefresher(lambda: read_actuator_inventory(config), actuator.follow_inventory, 0.5).start()
    try:
        data.write_text(json.dumps(["vm-a", "vm-b", "vm-c"]))
        wait_for(lambda: "vm-c" in actuator.observe().hosts, 30, "vm-c read on the interval")
        assert actuator.take_inventory_changes().to_dict() == {"added": ["vm-c"]}
        data.write_text("[]")  # an empty answer: taken for a broken one, not as "drain everything"
        assert refresher.refresh() is True
        assert set(actuator.observe().hosts) == {"vm-a", "vm-b", "vm-c"}
        data.write_text("not json")  # the script fails: a cloud API that is down
        wait_for(lambda: refresher.last_error is not None, 30, "a failed re-read")
        assert str(script) in str(refresher.last_error)
        assert set(actuator.observe().hosts) == {"vm-a", "vm-b", "vm-c"}
        assert not any(h.retiring for h in actuator.observe().hosts.values())
        assert not actuator.take_inventory_changes()
    finally:
        refresher.stop()
        actuator.close()
