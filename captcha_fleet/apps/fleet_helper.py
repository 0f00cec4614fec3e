#!/usr/bin/env python3
"""Fleet operations the playbooks need on a worker host: drain flag, host lock lease, wait for idle, health gate,
self-check, canary.

The worker role installs this file from the checkout, alone, as ``<worker_libexec_dir>/fleet_helper.py``
(roles/worker/tasks/helper_install.yml) and runs it with a release virtualenv's Python, possibly an older release's
(the one a roll falls back to): so a roll from a newer checkout has the commands it calls. It lives in the package
to be type-checked and import-linted with its callees; it stays one module with absolute imports only, and imports
from ``captcha_fleet`` only what releases already have (key names, config, the fleet reader the controller and
``status`` use, the TTL lock, the records). Secrets are read from the environment file given
by path, never from argv, and never printed. Every command prints one JSON line and exits 0 on success, 1 when
the condition was not met in time; an unexpected error prints its type and message (secrets scrubbed) as JSON
too, so the playbook can show it.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import redis

from captcha_fleet.contract.config import FleetConfig, load_config
from captcha_fleet.contract.fleet_snapshot import read_snapshot
from captcha_fleet.contract.records import Heartbeat, Result
from captcha_fleet.contract.redis_connect import connect as connect_redis
from captcha_fleet.contract.ttl_lock import TtlLock, ttl_ms


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        parts = shlex.split(value) if value else [""]
        env[key.strip()] = parts[0] if parts else ""
    return env


SECRET_NAMES = ("REDIS_URL", "CAPTCHAAI_KEY")


def env_secrets(path: Path) -> list[str]:
    """The secret values of the environment file (and the password inside REDIS_URL), to scrub from errors."""
    try:
        env = read_env_file(path)
    except OSError:
        return []
    found = [env[name] for name in SECRET_NAMES if env.get(name)]
    parts = urlsplit(env.get("REDIS_URL", ""))
    found += [s for s in (parts.password, parts.username) if s]
    return sorted(found, key=len, reverse=True)


def connect(args: argparse.Namespace) -> tuple[FleetConfig, redis.Redis]:
    env = read_env_file(Path(args.env_file))
    config = load_config(args.config, env=env)
    client = connect_redis(config, socket_timeout=30, env=env)  # plain, TLS or Sentinel, as the worker does
    return config, client


def host_heartbeats(config: FleetConfig, client: redis.Redis, host: str) -> list[Heartbeat]:
    """The live heartbeats of the host's workers, read as the controller and ``status`` read them.

    A malformed heartbeat is skipped (the reader logs it on stderr), as a missing one: it is not healthy, not busy.
    """
    snapshot = read_snapshot(client, config.keys, host=host)
    return [w.beat for w in snapshot.workers.values() if w.beat.host == host]


def cmd_drain(args: argparse.Namespace) -> int:
    config, client = connect(args)
    key = config.keys.host_draining(args.host)
    if args.action == "set":
        set_draining(client, key, args.ttl)
    else:
        client.delete(key)
    print(json.dumps({"host": args.host, "draining": args.action == "set"}))
    return 0


def set_draining(client: redis.Redis, key: str, ttl_s: float) -> None:
    """Set the host's draining flag; it expires by itself: a roll cut off mid-host must not leave the host drained."""
    client.set(key, json.dumps({"since": time.time(), "by": "ansible"}), px=ttl_ms(ttl_s))


def cmd_lock(args: argparse.Namespace) -> int:
    """The per-host lock a scale run shares with the playbooks: wait for it (up to --wait), renew it, or give it
    back. ``release`` exits 0 whether or not it was ours (the answer says which): an operator frees a host a dead
    roll left locked with the roll's token (``rolling_update:<host>``), which never breaks another's live hold."""
    config, client = connect(args)
    key = config.keys.host_lock(args.host)
    if args.action == "release":
        released = TtlLock(client, key, args.ttl, token=args.token).release()
        print(json.dumps({"host": args.host, "released": released}))
        return 0
    if args.action == "renew":
        return renew_lease(args, config, client, key)
    holder = acquire_lock(client, key, args.token, args.ttl, args.wait)
    if holder is not None:
        print(json.dumps({"host": args.host, "locked": False, "holder": holder}))
        return 1
    print(json.dumps({"host": args.host, "locked": True}))
    return 0


def renew_lease(args: argparse.Namespace, config: FleetConfig, client: redis.Redis, key: str) -> int:
    """Extend our hold on the host's lock to ``--ttl`` (the next step's bound), and with ``--drain`` the draining
    flag too; nothing when the lock lapsed or changed hands (exit 1): the roll then stops rather than go on
    changing a host the controller may be scaling, and the flag an operator cleared stays cleared.

    A roll renews before each step instead of holding one TTL for the whole host: cut off, it frees the host
    within the current step's bound.
    """
    if not TtlLock(client, key, args.ttl, token=args.token).renew():
        print(json.dumps({"host": args.host, "renewed": False, "holder": TtlLock(client, key, 1).holder()}))
        return 1
    if args.drain:
        set_draining(client, config.keys.host_draining(args.host), args.ttl)
    print(json.dumps({"host": args.host, "renewed": True, "ttl_s": args.ttl, "draining": bool(args.drain)}))
    return 0


def acquire_lock(client: redis.Redis, key: str, token: str, ttl: float, wait: float) -> str | None:
    """Take the lock, waiting up to ``wait`` seconds; None when held, else who holds it.

    The same token takes over its own hold (a re-run after an interrupted one): the lock is the controller's
    (:class:`captcha_fleet.contract.ttl_lock.TtlLock`), so the helper and the actuator follow one rule.
    """
    lock = TtlLock(client, key, ttl, token=token)
    deadline = time.monotonic() + wait
    while not lock.acquire():
        if time.monotonic() > deadline:
            return lock.holder() or "(expired meanwhile)"
        time.sleep(0.5)
    return None


def cmd_wait_idle(args: argparse.Namespace) -> int:
    config, client = connect(args)
    deadline = time.monotonic() + args.timeout
    while True:
        beats = host_heartbeats(config, client, args.host)
        busy = sum(b.busy for b in beats)
        if busy == 0:
            print(json.dumps({"host": args.host, "idle": True, "workers": len(beats)}))
            return 0
        if time.monotonic() > deadline:
            print(json.dumps({"host": args.host, "idle": False, "busy": busy, "deadline": True}))
            return 0  # the deadline passed: go on, stopping the workers requeues what is left
        time.sleep(0.5)


def cmd_health(args: argparse.Namespace) -> int:
    config, client = connect(args)
    wanted = {i for i in args.instances.split(",") if i}
    deadline = time.monotonic() + args.timeout
    seen: dict[str, Any] = {}
    while True:
        beats = host_heartbeats(config, client, args.host)
        seen = {b.instance: {"version": b.version or None, "state": b.state, "started": b.started_at} for b in beats}
        good = {
            b.instance
            for b in beats
            if b.version == args.version
            # draining counts: the process of the new release is up and heartbeats; its slot target is 0 because
            # it read the host's flag before the roll cleared it, or the controller is scaling it down
            and b.state in ("running", "draining")
            and (b.started_at or 0.0) >= args.since
        }
        if wanted <= good:
            print(json.dumps({"host": args.host, "healthy": True, "instances": sorted(good)}))
            return 0
        if time.monotonic() > deadline:
            print(json.dumps({"host": args.host, "healthy": False, "want": sorted(wanted), "seen": seen}))
            return 1
        time.sleep(0.5)


def cmd_restart(args: argparse.Namespace) -> int:
    """Drain the host, wait until its workers hold nothing (or the deadline), run the restart command, clear.

    Without Redis the restart still happens (as it would without a drain): a config change must not wait on it.
    """
    command = [a for a in args.command if a != "--"]
    if not command:
        print(json.dumps({"error": "no restart command after --"}))
        return 1
    drained = False
    locked = False
    client: redis.Redis | None = None
    config: FleetConfig | None = None
    try:
        config, client = connect(args)
        if args.lock_token:
            # the host's lock first, as the rolling update does: no scale run or roll changes the host meanwhile
            holder = acquire_lock(client, config.keys.host_lock(args.host), args.lock_token, args.ttl, args.lock_wait)
            if holder is not None:
                print(json.dumps({"host": args.host, "restarted": False, "locked": False, "holder": holder}))
                return 1
            locked = True
        set_draining(client, config.keys.host_draining(args.host), args.ttl)
        drained = True
        deadline = time.monotonic() + args.timeout
        while sum(b.busy for b in host_heartbeats(config, client, args.host)) > 0:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
    except redis.RedisError as exc:
        print(f"restart without a drain: redis: {type(exc).__name__}", file=sys.stderr)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, check=False, timeout=args.command_timeout)
    finally:
        if drained and client is not None and config is not None:
            client.delete(config.keys.host_draining(args.host))
        if locked and client is not None and config is not None:
            TtlLock(client, config.keys.host_lock(args.host), args.ttl, token=args.lock_token).release()
    failed = proc.returncode != 0 or "ERROR" in proc.stdout
    print(json.dumps({"host": args.host, "drained": drained, "restarted": not failed, "rc": proc.returncode,
                      "output": (proc.stdout + proc.stderr)[-500:]}))  # fmt: skip
    return 1 if failed else 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Start the release's worker as its services would (no slots: it claims nothing) and wait for its heartbeat.

    A host that runs no worker passes the health gate on its empty service state: a release whose worker raises at
    start would be recorded as good there, and crash-loop once the controller places services on it. The probe
    judges the release by starting it: its heartbeat with the release's version, or its exit and last words.
    """
    config, client = connect(args)
    env = {**os.environ, **read_env_file(Path(args.env_file))}  # secrets reach it only through the environment
    instance = f"probe-{uuid.uuid4().hex[:8]}"
    command = [args.worker, "worker", "--config", args.config, "--host-name", args.host, "--instance", instance,
               "--slots", "0"]  # fmt: skip
    started = time.time()
    # stderr to a file, not a pipe: a worker that logs much must never block on a full pipe
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True, **as_user(args.user)
        )
        try:
            return wait_for_probe(args, config, client, proc, log, instance, started)
        finally:
            stop_probe(proc)


def wait_for_probe(
    args: argparse.Namespace,
    config: FleetConfig,
    client: redis.Redis,
    proc: subprocess.Popen[str],
    log: IO[str],
    instance: str,
    started: float,
) -> int:
    """The probe's heartbeat with the release's version (0), or its exit or silence (1), as one JSON line."""
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        beat = next((b for b in host_heartbeats(config, client, args.host) if b.instance == instance), None)
        if beat is not None and beat.version == args.version and (beat.started_at or 0.0) >= started - 1:
            print(json.dumps({"host": args.host, "probe": True, "version": beat.version, "state": beat.state}))
            return 0
        if proc.poll() is not None:
            log.seek(0)
            said = scrub(log.read()[-800:], Path(args.env_file))
            print(json.dumps({"host": args.host, "probe": False, "exit": proc.returncode, "stderr": said}))
            return 1
        time.sleep(0.3)
    print(json.dumps({"host": args.host, "probe": False, "error": f"no heartbeat within {args.timeout:g} s"}))
    return 1


def as_user(name: str) -> dict[str, Any]:
    """Popen's arguments to run as ``name`` with its own groups, as its services do (its configuration is readable
    by its group only; ``user=`` alone would keep root's groups). Empty: as this process."""
    if not name:
        return {}
    entry = pwd.getpwnam(name)
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": groups}


def stop_probe(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (a worker drains, holding nothing, and unregisters), SIGKILL if it will not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scrub(text: str, env_file: Path) -> str:
    """``text`` with the environment file's secrets blanked."""
    for secret in env_secrets(env_file):
        text = text.replace(secret, "***")
    return text


def cmd_selfcheck(args: argparse.Namespace) -> int:
    """Run with the new release's Python: it imports, reads its config, writes Redis, and the key is accepted.

    The API check reads the balance, which costs nothing (no paid solve).
    """
    from captcha_fleet.apps.doctor.checks import Status, check_api, check_redis

    env = read_env_file(Path(args.env_file))
    config = load_config(args.config, env=env)
    checks = [check_redis(config, args.timeout)]
    if not args.skip_api:
        checks.append(check_api(config, args.timeout))
    ok = all(c.status is not Status.FAIL for c in checks)
    print(json.dumps({"selfcheck": ok, "checks": [{"name": c.name, "status": c.status.value, "detail": c.detail}
                                                   for c in checks]}))  # fmt: skip
    return 0 if ok else 1


def cmd_canary(args: argparse.Namespace) -> int:
    """Submit canary tasks until one is solved on this host; every canary must succeed."""
    config, client = connect(args)
    keys = config.keys
    params = json.loads(args.params)
    deadline = time.monotonic() + args.timeout
    results: list[dict[str, Any]] = []
    pending: list[str] = []
    on_host = False
    while time.monotonic() < deadline and not on_host:
        while len(pending) < args.parallel:
            task_id = f"canary-{args.host}-{uuid.uuid4().hex[:12]}"
            task = {"id": task_id, "method": args.method, "params": params, "enqueued_at": time.time(),
                    "canary": True}  # fmt: skip
            client.rpush(keys.tasks, json.dumps(task))
            pending.append(task_id)
        wait_ms = 1000 * max(1, min(5, int(deadline - time.monotonic())))
        # The finish script's per-task streams, read without consuming them (the worker user has no BLPOP there).
        streams = {keys.done(t): "0" for t in pending}
        replies: list[Any] = list(client.xread(streams, count=1, block=wait_ms) or [])  # type: ignore[arg-type]
        if not replies:
            continue
        first = replies[0][0]
        done_key = first.decode() if isinstance(first, bytes) else str(first)
        task_id = next(t for t in pending if keys.done(t) == done_key)
        pending.remove(task_id)
        raw = client.hget(keys.results, task_id)
        result = Result.from_json(raw or replies[0][1][0][1][b"result"])
        results.append({"id": task_id, "status": result.status, "host": result.host, "error": result.error})
        if not result.ok:
            print(json.dumps({"host": args.host, "canary": False, "results": results}))
            return 1
        on_host = result.host == args.host
    print(json.dumps({"host": args.host, "canary": on_host, "results": results, "unfinished": pending}))
    return 0 if on_host else 1


def seconds(text: str) -> float:
    """A TTL or timeout: a finite number of seconds above 0 (argparse names the option when it is not)."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line the playbooks call (roles/worker/tasks/helper.yml and restart_drained.yml)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="fleet.yml")
    parser.add_argument("--env-file", required=True, help="environment file with REDIS_URL (read, not printed)")
    sub = parser.add_subparsers(dest="command", required=True)
    add_host_commands(sub)
    add_release_commands(sub)
    return parser


def add_host_commands(sub: Any) -> None:
    """drain, lock, wait-idle, health: the host's flag, its lock and its workers' heartbeats."""
    drain = sub.add_parser("drain", help="set or clear the host's draining flag")
    drain.add_argument("action", choices=["set", "clear"])
    drain.add_argument("--host", required=True)
    drain.add_argument("--ttl", type=seconds, default=900, help="seconds until the flag expires by itself")
    drain.set_defaults(func=cmd_drain)
    lock = sub.add_parser("lock", help="take (waiting for a scale run to end), renew or give back the host's lock")
    lock.add_argument("action", choices=["acquire", "renew", "release"])
    lock.add_argument("--host", required=True)
    lock.add_argument("--token", required=True, help="owner token (the same for acquire, renew and release)")
    lock.add_argument("--ttl", type=seconds, default=900, help="seconds until the lock expires by itself")
    lock.add_argument("--wait", type=float, default=300, help="seconds to wait for the lock")
    lock.add_argument("--drain", action="store_true", help="renew: the draining flag too, for the same TTL")
    lock.set_defaults(func=cmd_lock)
    idle = sub.add_parser("wait-idle", help="wait until the host's workers hold no task (or the deadline)")
    idle.add_argument("--host", required=True)
    idle.add_argument("--timeout", type=float, default=120)
    idle.set_defaults(func=cmd_wait_idle)
    health = sub.add_parser("health", help="wait for the host's instances to heartbeat with a version")
    health.add_argument("--host", required=True)
    health.add_argument("--version", required=True)
    health.add_argument("--instances", required=True, help="comma-separated instance names")
    health.add_argument("--since", type=float, default=0.0, help="heartbeats must come from processes started later")
    health.add_argument("--timeout", type=float, default=60)
    health.set_defaults(func=cmd_health)


def add_release_commands(sub: Any) -> None:
    """restart, selfcheck, canary: what a roll or a config change runs on the host."""
    restart = sub.add_parser("restart", help="drain the host, run the restart command after --, clear the flag")
    restart.add_argument("--host", required=True)
    restart.add_argument("--ttl", type=seconds, default=900, help="seconds until the flag expires by itself")
    restart.add_argument("--timeout", type=float, default=120, help="wait at most this long for idle workers")
    restart.add_argument("--command-timeout", type=float, default=600)
    restart.add_argument("--lock-token", default="", help="take the host's lock under this token first")
    restart.add_argument("--lock-wait", type=float, default=300, help="seconds to wait for the host's lock")
    restart.add_argument("command", nargs=argparse.REMAINDER)
    restart.set_defaults(func=cmd_restart)
    selfcheck = sub.add_parser("selfcheck", help="the release reads its config, writes Redis, its key is accepted")
    selfcheck.add_argument("--timeout", type=float, default=10)
    selfcheck.add_argument("--skip-api", action="store_true", help="do not read the balance")
    selfcheck.set_defaults(func=cmd_selfcheck)
    probe = sub.add_parser("probe", help="start the release's worker with no slots; wait for its heartbeat")
    probe.add_argument("--host", required=True)
    probe.add_argument("--version", required=True)
    probe.add_argument("--worker", required=True, help="the release's captcha-fleet executable")
    probe.add_argument("--user", default="", help="run it as this user (the services' user)")
    probe.add_argument("--timeout", type=float, default=60)
    probe.set_defaults(func=cmd_probe)
    canary = sub.add_parser("canary", help="submit canary tasks until one is solved on this host")
    canary.add_argument("--host", required=True)
    canary.add_argument("--method", default="base64")
    canary.add_argument("--params", default="{}", help="JSON task parameters")
    canary.add_argument("--parallel", type=int, default=2)
    canary.add_argument("--timeout", type=float, default=60)
    canary.set_defaults(func=cmd_canary)


def main() -> int:
    args = build_parser().parse_args()
    try:
        return int(args.func(args))
    except redis.RedisError as exc:
        print(json.dumps({"error": f"redis: {type(exc).__name__}"}))
        return 1
    except Exception as exc:  # shown by the playbook: say what went wrong, never a secret
        message = scrub(f"{type(exc).__name__}: {exc}", Path(args.env_file))
        print(json.dumps({"error": message[-1000:]}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
