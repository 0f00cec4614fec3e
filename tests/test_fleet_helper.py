"""The fleet helper as the playbooks run it (a subprocess, secrets in an env file), on real Redis.

The worker role installs captcha_fleet/apps/fleet_helper.py as one file; the tests run that file by path too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml

from captcha_fleet.contract.keys import Keys

HELPER = Path(__file__).resolve().parent.parent / "captcha_fleet" / "apps" / "fleet_helper.py"


def helper(
    tmp_path: Path, redis_url: str, keys: Keys, *args: str, config_text: str | None = None
) -> tuple[int, dict[str, object], str]:
    config = tmp_path / "fleet.yml"
    config.write_text(config_text or f"key_prefix: {keys.prefix}\n", encoding="utf-8")
    env_file = tmp_path / "worker.env"
    env_file.write_text(f"REDIS_URL='{redis_url}'\nCAPTCHAAI_KEY='k-secret-123'\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(HELPER), "--config", str(config), "--env-file", str(env_file), *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_the_drain_flag_expires_by_itself(tmp_path: Path, redis_url: str, r: redis.Redis, keys: Keys) -> None:
    rc, answer, _ = helper(tmp_path, redis_url, keys, "drain", "set", "--host", "h1", "--ttl", "300")
    assert rc == 0 and answer["draining"] is True
    assert 0 < r.ttl(keys.host_draining("h1")) <= 300
    rc, _, _ = helper(tmp_path, redis_url, keys, "drain", "clear", "--host", "h1")
    assert rc == 0 and not r.exists(keys.host_draining("h1"))


def test_restart_runs_drained_and_clears_the_flag_however_it_ends(
    tmp_path: Path, redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    flag = keys.host_draining("h1")
    probe = "import sys, redis; print('DRAINED' if redis.Redis.from_url(sys.argv[1]).exists(sys.argv[2]) else 'NOT')"
    rc, answer, _ = helper(
        tmp_path, redis_url, keys, "restart", "--host", "h1", "--", sys.executable, "-c", probe, redis_url, flag
    )
    assert rc == 0 and answer["restarted"] is True
    assert "DRAINED" in str(answer["output"]), "the restart command runs while the host is drained"
    assert not r.exists(flag)
    rc, answer, _ = helper(tmp_path, redis_url, keys, "restart", "--host", "h1", "--", sys.executable, "-c", "exit(3)")
    assert rc == 1 and answer["restarted"] is False and answer["rc"] == 3
    assert not r.exists(flag)


def test_a_failed_self_check_says_why_without_the_secrets(tmp_path: Path, keys: Keys) -> None:
    url = "redis://:p-secret-456@127.0.0.1:1/0"  # nothing listens on port 1
    rc, answer, stderr = helper(tmp_path, url, keys, "selfcheck", "--timeout", "1", "--skip-api")
    assert rc == 1 and answer["selfcheck"] is False
    text = json.dumps(answer) + stderr
    assert "cannot connect" in text
    assert "p-secret-456" not in text and "k-secret-123" not in text


def test_an_unexpected_error_is_an_answer_too(tmp_path: Path, redis_url: str, keys: Keys) -> None:
    """A crash before the helper could answer still prints JSON the playbook shows (no "no answer")."""
    rc, answer, _ = helper(tmp_path, redis_url, keys, "drain", "set", "--host", "h1", config_text="key_prefix: [\n")
    assert rc == 1
    assert "Error" in str(answer["error"])


def test_the_host_lock_is_shared_with_the_actuator(tmp_path: Path, redis_url: str, r: redis.Redis, keys: Keys) -> None:
    from captcha_fleet.controller.hosts.lock import RedisHostLock

    rc, answer, _ = helper(tmp_path, redis_url, keys, "lock", "acquire", "--host", "h1", "--token", "roll-1")
    assert rc == 0 and answer["locked"] is True
    actuator_lock = RedisHostLock(r, keys, token="ctl")
    assert actuator_lock.acquire(["h1", "h2"], ttl_s=60) == {"h2"}, "a rolling host is not scaled"
    rc, answer, _ = helper(tmp_path, redis_url, keys, "lock", "acquire", "--host", "h2", "--token", "roll-1",
                           "--wait", "0.5")  # fmt: skip
    assert rc == 1 and answer["holder"] == "actuator:ctl", "a roll waits for a scale run to end"
    actuator_lock.release(["h1", "h2"])  # never another's lock
    assert r.get(keys.host_lock("h1")) == b"roll-1" and not r.exists(keys.host_lock("h2"))
    rc, answer, _ = helper(tmp_path, redis_url, keys, "lock", "release", "--host", "h1", "--token", "roll-1")
    assert rc == 0 and answer["released"] is True
    assert actuator_lock.acquire(["h1"], ttl_s=60) == {"h1"}


def test_a_restart_with_a_lock_token_waits_for_the_host_lock_and_gives_it_back(
    tmp_path: Path, redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    """site.yml's Restart-workers handler restarts under the host's lock, as rolling_update.yml does."""
    from captcha_fleet.controller.hosts.lock import RedisHostLock

    actuator_lock = RedisHostLock(r, keys, token="ctl")
    assert actuator_lock.acquire(["h1"], ttl_s=60) == {"h1"}
    marker = tmp_path / "ran"
    touch = f"open({str(marker)!r}, 'w').close()"
    rc, answer, _ = helper(tmp_path, redis_url, keys, "restart", "--host", "h1", "--lock-token", "site:h1",
                           "--lock-wait", "1", "--", sys.executable, "-c", touch)  # fmt: skip
    assert rc == 1 and answer["locked"] is False and answer["holder"] == "actuator:ctl"
    assert not marker.exists(), "no restart while a scale run holds the host"
    assert not r.exists(keys.host_draining("h1"))
    actuator_lock.release(["h1"])
    probe = "import sys, redis; print('HELD BY', redis.Redis.from_url(sys.argv[1]).get(sys.argv[2]).decode())"
    rc, answer, _ = helper(tmp_path, redis_url, keys, "restart", "--host", "h1", "--lock-token", "site:h1", "--",
                           sys.executable, "-c", probe, redis_url, keys.host_lock("h1"))  # fmt: skip
    assert rc == 0 and "HELD BY site:h1" in str(answer["output"])
    assert not r.exists(keys.host_lock("h1")), "the lock is given back after the restart"


def test_the_health_gate_takes_a_new_worker_at_target_zero_and_refuses_a_failed_one(
    tmp_path: Path, redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    """A restarted worker that read the drain flag before the roll cleared it (target 0) is a healthy release."""
    import time

    def beat(instance: str, state: str) -> None:
        worker_id = f"h1:{instance}"
        r.zadd(keys.workers, {worker_id: time.time()})
        body = {"host": "h1", "instance": instance, "version": "9.9", "state": state, "started_at": time.time()}
        r.set(keys.heartbeat(worker_id), json.dumps(body), ex=60)

    since = str(time.time() - 1)
    beat("1", "draining")
    rc, answer, _ = helper(tmp_path, redis_url, keys, "health", "--host", "h1", "--version", "9.9",
                           "--instances", "1", "--since", since, "--timeout", "1")  # fmt: skip
    assert rc == 0 and answer["healthy"] is True
    beat("1", "failed")  # a worker thread died
    rc, answer, _ = helper(tmp_path, redis_url, keys, "health", "--host", "h1", "--version", "9.9",
                           "--instances", "1", "--since", since, "--timeout", "1")  # fmt: skip
    assert rc == 1 and answer["healthy"] is False


def test_a_malformed_heartbeat_is_skipped_and_named_not_a_crash(
    tmp_path: Path, redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    """The helper reads heartbeats as the controller and status do: an unreadable one counts as absent."""
    import time

    r.zadd(keys.workers, {"h1:1": time.time(), "h1:2": time.time()})
    good = {"host": "h1", "instance": "1", "version": "9.9", "state": "running", "busy": 0, "started_at": time.time()}
    r.set(keys.heartbeat("h1:1"), json.dumps(good), ex=60)
    r.set(keys.heartbeat("h1:2"), b"{torn", ex=60)
    rc, answer, stderr = helper(tmp_path, redis_url, keys, "wait-idle", "--host", "h1", "--timeout", "1")
    assert rc == 0 and answer == {"host": "h1", "idle": True, "workers": 1}
    assert "malformed heartbeat of h1:2" in stderr
    rc, answer, _ = helper(tmp_path, redis_url, keys, "health", "--host", "h1", "--version", "9.9",
                           "--instances", "1,2", "--timeout", "1")  # fmt: skip
    assert rc == 1 and answer["healthy"] is False and list(answer["seen"]) == ["1"]  # type: ignore[call-overload]


def test_the_probe_starts_the_release_worker_claiming_nothing_and_names_a_broken_one(
    tmp_path: Path, redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    """A host with no worker is judged by starting the release's worker (no slots): its heartbeat with the version
    passes; a worker that dies at start fails the gate with its last words, secrets blanked."""
    from captcha_fleet import __version__

    worker = str(Path(sys.executable).parent / "captcha-fleet")
    r.rpush(keys.tasks, json.dumps({"id": "t1", "method": "base64", "params": {"body": "aGk="}}))
    rc, answer, _ = helper(
        tmp_path, redis_url, keys, "probe", "--host", "h1", "--version", __version__, "--worker", worker,
        "--timeout", "60",
    )  # fmt: skip
    assert rc == 0 and answer["probe"] is True and answer["version"] == __version__, answer
    assert r.llen(keys.tasks) == 1, "the probe claimed a task"
    assert r.zcard(keys.workers) == 0, "the probe unregistered when it stopped"

    broken = tmp_path / "broken-worker"
    broken.write_text('#!/bin/sh\necho "worker failed at start (key $CAPTCHAAI_KEY)" >&2\nexit 3\n', encoding="utf-8")
    broken.chmod(0o755)
    rc, answer, _ = helper(
        tmp_path, redis_url, keys, "probe", "--host", "h1", "--version", __version__, "--worker", str(broken),
        "--timeout", "30",
    )  # fmt: skip
    assert rc == 1 and answer["probe"] is False and answer["exit"] == 3, answer
    assert "worker failed at start" in str(answer["stderr"]) and "k-secret-123" not in json.dumps(answer)


def test_the_probe_runs_as_the_services_user_with_its_groups(redis_url: str, keys: Keys) -> None:
    """The services' configuration is readable by their group only: the probe runs as their user with that user's
    groups (``user=`` alone kept root's groups, and the probe could not read fleet.yml in the deployed lab).
    The stand-in worker (a shell script: this test's Python lives where another user cannot run it) says whether
    it could read the configuration, as whom, and exits."""
    import os
    import pwd
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("runs a process as another user: needs root")
    user = pwd.getpwnam("nobody")
    shared = Path(tempfile.mkdtemp(prefix="probe-user-"))
    try:
        shared.chmod(0o755)
        config = shared / "fleet.yml"
        config.write_text(f"key_prefix: {keys.prefix}\n", encoding="utf-8")
        os.chown(config, 0, user.pw_gid)
        config.chmod(0o640)  # as the worker role writes it: root's, readable by the services' group
        env_file = shared / "worker.env"
        env_file.write_text(f"REDIS_URL='{redis_url}'\n", encoding="utf-8")
        env_file.chmod(0o600)
        worker = shared / "worker"
        worker.write_text(
            '#!/bin/sh\nif cat "$3" >/dev/null; then echo "read as $(id -un)" >&2; else echo denied >&2; fi\nexit 3\n',
            encoding="utf-8",
        )
        worker.chmod(0o755)
        proc = subprocess.run(
            [sys.executable, str(HELPER), "--config", str(config), "--env-file", str(env_file), "probe",
             "--host", "h1", "--version", "0", "--worker", str(worker), "--user", "nobody", "--timeout", "30"],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        assert answer["exit"] == 3 and "read as nobody" in str(answer["stderr"]), answer
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_the_file_the_worker_role_installs_runs_alone_in_its_libexec_dir(
    tmp_path: Path, redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    """helper_install.yml copies the package's fleet_helper.py as one file: that copy, alone in a directory, answers
    as the playbooks call it (no import of a sibling module, no package-relative import)."""
    role = Path(__file__).resolve().parent.parent / "roles" / "worker"
    (install,) = yaml.safe_load((role / "tasks" / "helper_install.yml").read_text(encoding="utf-8"))
    source = Path(install["ansible.builtin.copy"]["src"].replace("{{ role_path }}", str(role))).resolve()
    assert source == HELPER.resolve(), "the role installs the helper the tests run"
    libexec = tmp_path / "libexec"
    libexec.mkdir()
    installed = libexec / Path(install["ansible.builtin.copy"]["dest"]).name
    shutil.copy2(source, installed)
    (tmp_path / "fleet.yml").write_text(f"key_prefix: {keys.prefix}\n", encoding="utf-8")
    (tmp_path / "worker.env").write_text(f"REDIS_URL='{redis_url}'\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(installed), "--config", str(tmp_path / "fleet.yml"), "--env-file",
         str(tmp_path / "worker.env"), "drain", "set", "--host", "h1", "--ttl", "60"],
        capture_output=True, text=True, check=False, timeout=60, cwd=libexec,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == {"host": "h1", "draining": True}
    assert r.exists(keys.host_draining("h1"))
