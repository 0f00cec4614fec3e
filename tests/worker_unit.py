"""``captcha-fleet worker`` started as its systemd unit starts it, for tests that run the real process against a
Redis they shape (TLS, ACL users, Sentinel): the secret URL and the API key in the environment, never in argv,
and the output in a log file the test reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def start_worker_unit(
    config_path: Path, url: str, api: str, log_path: Path, host: str, instance: str = "1"
) -> subprocess.Popen[bytes]:
    """The worker ``host:instance`` on ``config_path``, Redis at ``url`` and the API at ``api``, logging to
    ``log_path`` at INFO."""
    env = dict(os.environ, REDIS_URL=url, CAPTCHAAI_BASE=api, CAPTCHAAI_KEY="k")
    args = [sys.executable, "-m", "captcha_fleet.apps.cli", "worker", "--config", str(config_path)]
    args += ["--host-name", host, "--instance", instance, "--log-level", "INFO"]
    with log_path.open("wb") as log:
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
