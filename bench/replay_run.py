"""One live ``captcha-fleet replay --json`` in a subprocess, its result read back: the live side of every bench
that sets the real fleet beside the simulator (live_vs_sim, provider_profiles, compression)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def live_replay(
    trace: str, scale: float, seed: int, out: Path, window: str = "", provider: str | None = None
) -> dict[str, Any]:
    """Replay ``trace`` (``builtin:NAME`` or a CSV) at ``scale``; its JSON result. Exit 1 (a task lost) is still a
    result to report; any other failure ends the bench with the replay's stderr."""
    argv = [sys.executable, "-m", "captcha_fleet.apps.cli", "replay", "--trace", trace, "--json"]
    argv += ["--time-scale", str(scale), "--seed", str(seed), "--out", str(out)]
    if window:
        argv += ["--window", window]
    if provider:
        argv += ["--provider", provider]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv[3:])} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))
