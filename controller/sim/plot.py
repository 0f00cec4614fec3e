"""Draw a run: demand, backlog and capacity over time (matplotlib, imported only when asked for)."""

from __future__ import annotations

from pathlib import Path

from .engine import SimResult


def plot(result: SimResult, path: str | Path, p95_target_s: float | None = None) -> None:
    """Write a PNG with two panels: slots (demand, capacity, busy) and queue (backlog, rolling P95)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("--plot needs matplotlib: pip install 'captcha-fleet[plot]'") from exc

    s = result.series
    minutes = [t / 60 for t in s.t]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    top.plot(minutes, s.demand, color="0.6", lw=1, label="demand (arrivals/s x median solve, 60 s mean)")
    top.plot(minutes, s.capacity, color="tab:blue", lw=1.2, label="slots asked for (incl. starting)")
    top.plot(minutes, s.slots, color="tab:green", lw=1, label="slots in effect")
    top.plot(minutes, s.busy, color="tab:orange", lw=0.6, alpha=0.7, label="busy slots")
    top.set_ylabel("slots")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(
        f"{result.policy} on {result.trace}: P95 {result.p95_latency_s:.0f}s, "
        f"{result.worker_seconds / result.oracle_worker_seconds:.2f}x oracle worker-seconds, "
        f"{result.scale_changes} scale changes"
    )
    bottom.plot(minutes, s.backlog, color="tab:red", lw=1, label="backlog (pending)")
    bottom.set_ylabel("tasks pending")
    right = bottom.twinx()
    right.plot(
        minutes,
        [p if p is not None else float("nan") for p in s.p95],
        color="tab:purple",
        lw=0.8,
        label="rolling P95 (s)",
    )
    if p95_target_s is not None:
        right.axhline(p95_target_s, color="tab:purple", ls="--", lw=0.8)
    right.set_ylabel("rolling P95 latency (s)")
    bottom.set_xlabel("minutes")
    handles = bottom.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    bottom.legend(handles, [str(h.get_label()) for h in handles], loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=90)
    plt.close(fig)
