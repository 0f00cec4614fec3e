"""Render a :class:`FleetState` as a rich table, for ``status --watch`` and the demo."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from captcha_fleet.fleet_state import FleetState


def render(state: FleetState, title: str = "captcha-fleet") -> Group:
    """The queue line, one row per worker, and the last decisions."""
    headline = Text.assemble(
        (f"{title}  ", "bold"),
        f"pending {state.pending}   in flight {state.in_flight}   ",
        f"slots {state.busy}/{state.slots}   results {state.results}   dead-letter {state.deadletter}",
    )
    workers = Table(show_edge=False, pad_edge=False, expand=False)
    for column in ("worker", "state", "busy/slots", "done", "failed", "p95 s", "version", "beat age s"):
        left = column in ("worker", "state", "version")
        workers.add_column(column, justify="left" if left else "right")
    for w in sorted(state.workers, key=lambda w: w.id):
        p95 = "-" if w.p95_s is None else f"{w.p95_s:.2f}"
        cells = (w.id, w.state, f"{w.busy}/{w.slots}", str(w.completed), str(w.failed), p95, w.version)
        workers.add_row(*cells, f"{w.age_s:.1f}")
    for worker_id in state.dead_workers:
        workers.add_row(worker_id, "[red]dead[/red]", "-", "-", "-", "-", "-", "-")
    parts: list[Text | Table] = [headline, workers]
    for decision in state.decisions[:5]:
        rule = decision.get("rule", "?")
        reason = decision.get("reason", "")
        parts.append(Text(f"decision: {rule}: {reason}", style="dim"))
    return Group(*parts)
