"""A private supervisord in a test's temporary directory, for the role scripts that drive one
(roles/worker/files/supervisor_apply.py and worker_programs.py): one config and one stop for both test modules."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_config(root: Path) -> Path:
    """``root/supervisord.conf``: a unix socket, logs and pid file in ``root``, programs from ``root/conf.d``."""
    (root / "conf.d").mkdir()
    config = root / "supervisord.conf"
    config.write_text(
        f"[unix_http_server]\nfile={root}/s.sock\nchmod=0700\n\n"
        f"[supervisord]\nlogfile={root}/supervisord.log\npidfile={root}/supervisord.pid\nchildlogdir={root}\n\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        f"[supervisorctl]\nserverurl=unix://{root}/s.sock\n\n[include]\nfiles = {root}/conf.d/*.conf\n"
    )
    return config


def stop(root: Path, timeout_s: float = 10.0) -> None:
    """Stop the supervisord of ``root`` if one runs (whoever started it: the test or the script under test)."""
    pid_file = root / "supervisord.pid"
    if not pid_file.exists():
        return
    subprocess.run(["kill", pid_file.read_text().strip()], check=False)
    deadline = time.monotonic() + timeout_s
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@contextmanager
def supervisord_root(root: Path) -> Iterator[Path]:
    """``root`` with the config written; whatever supervisord runs from it is stopped afterwards."""
    write_config(root)
    try:
        yield root
    finally:
        stop(root)
