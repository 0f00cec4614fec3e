"""Render a :class:`FleetState` with rich: for ``status`` (once or ``--watch``) and the demo's live view.

The tables show the page the state holds; the summary lines count every entry, so a registry flooded with
forged or unmanaged workers reads as one line of counts, not ten thousand rows.
"""

from __future__ import annotations

import time

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from captcha_fleet.apps.status.fleet_state import FleetState

VERDICT_STYLE = {"up": "bold yellow", "down": "cyan", "ok": "green", "floor": "bold red", "unknown": "dim"}


def render(state: FleetState, title: str = "captcha-fleet") -> Group:
    """Queue line, hosts, workers, the five signals, balance, and the last decisions."""
    headline = Text.assemble(
        (f"{title}  ", "bold"),
        f"pending {state.pending}   in flight {state.in_flight}   ",
        f"slots {state.busy}/{state.slots}   results {state.results}   dead-letter {state.deadletter}   ",
        f"leader {state.leader or '[none]'}",
    )
    parts: list[Text | Table] = [headline, _summary(state), _hosts(state), _workers(state)]
    if state.truncated:
        parts.append(Text(_more(state), style="dim"))
    parts += [_signals(state), _balance(state)]
    for decision in state.decisions[:5]:
        at = decision.get("at")
        when = time.strftime("%H:%M:%S", time.localtime(at)) if isinstance(at, int | float) else "?"
        slots = f"{decision.get('previous_slots', '?')}->{decision.get('desired_slots', '?')}"
        parts.append(Text(f"{when} {decision.get('rule', '?')} {slots}: {decision.get('reason', '')}", style="dim"))
        lost = decision.get("lost")
        if isinstance(lost, list) and lost:
            reasons = decision.get("lost_why")
            why: dict[str, object] = reasons if isinstance(reasons, dict) else {}
            names = ", ".join(f"{w} ({why[w]})" if str(w) in why else str(w) for w in lost[:10])
            names += f" and {len(lost) - 10} more" if len(lost) > 10 else ""
            parts.append(Text(f"  lost (replaced): {names}", style="yellow"))
    return Group(*parts)


def _summary(state: FleetState) -> Text:
    """Every registered entry counted: live workers by state, dead, unreadable, and those nobody manages."""
    states = ", ".join(f"{n} {name}" for name, n in state.worker_states.items()) or "none"
    line = Text(f"workers {state.workers_total} ({states})   dead {state.dead_total}   ")
    line.append(f"unreadable heartbeat {state.malformed_total}   hosts {state.hosts_total}")
    unmanaged = state.unmanaged
    if unmanaged is not None and unmanaged.total:
        most = ", ".join(f"{h} {n}" for h, n in list(unmanaged.by_host.items())[:3])
        first = ", ".join(unmanaged.first[:5]) + (", ..." if unmanaged.total > 5 else "")
        line.append(
            f"\nnot managed by the controller: {unmanaged.total} workers on {unmanaged.hosts} hosts "
            f"(most: {most}); first: {first}",
            style="bold yellow",
        )
    return line


def _more(state: FleetState) -> str:
    """What the page leaves out, and how to see it."""
    limit = state.limit or 0
    return (
        f"page {state.page}: {len(state.workers)} of {state.workers_total} workers, {len(state.hosts)} of "
        f"{state.hosts_total} hosts, {len(state.dead_workers)} of {state.dead_total} dead, "
        f"{len(state.malformed_workers)} of {state.malformed_total} unreadable listed "
        f"(--limit {limit} --page {state.page + 1} for more, --limit 0 for all, --json for scripts)"
    )


def _hosts(state: FleetState) -> Table:
    table = Table(title="hosts", title_justify="left", show_edge=False, pad_edge=False)
    for column in ("host", "reachable", "draining", "services", "busy/slots", "versions", "last error"):
        table.add_column(column)
    for h in state.hosts:
        reachable = "?" if h.reachable is None else ("yes" if h.reachable else "[red]no[/red]")
        draining = "[yellow]retiring[/yellow]" if h.retiring else "[yellow]yes[/yellow]" if h.draining else "no"
        versions = ", ".join(h.versions) or "-"
        cells = (escape(h.name), reachable, draining, str(h.services), f"{h.busy}/{h.slots}", escape(versions))
        table.add_row(*cells, escape(h.last_error or ""))
    return table


def _workers(state: FleetState) -> Table:
    table = Table(title="workers", title_justify="left", show_edge=False, pad_edge=False)
    for column in ("worker", "state", "busy/slots", "done", "failed", "p95 s", "version", "beat age s"):
        table.add_column(column, justify="left" if column in ("worker", "state", "version") else "right")
    for w in state.workers:  # the state's order: managed first, then by id
        p95 = "-" if w.p95_s is None else f"{w.p95_s:.2f}"
        # Ids, states and versions are whatever a heartbeat says: shown as text, never as rich markup.
        status = escape(w.state) if w.managed is not False else f"{escape(w.state)} [yellow](not managed)[/yellow]"
        cells = (escape(w.id), status, f"{w.busy}/{w.slots}", str(w.completed), str(w.failed), p95, escape(w.version))
        table.add_row(*cells, f"{w.age_s:.1f}")
    for worker_id in state.dead_workers:
        table.add_row(escape(worker_id), "[red]dead[/red]", "-", "-", "-", "-", "-", "-")
    for worker_id in state.malformed_workers:  # skipped by every reader: say so rather than hide the worker
        table.add_row(escape(worker_id), "[red]unreadable heartbeat[/red]", "-", "-", "-", "-", "-", "-")
    return table


def _signals(state: FleetState) -> Table:
    table = Table(title="signals", title_justify="left", show_edge=False, pad_edge=False)
    for column in ("signal", "value", "scale up when", "scale down when", "now"):
        table.add_column(column)
    for s in state.signals:
        value = "-" if s.value is None else f"{s.value:.1f} {s.unit}"
        style = VERDICT_STYLE.get(s.verdict, "")
        table.add_row(s.name, value, s.up_when, s.down_when, f"[{style}]{s.verdict}[/{style}]")
    return table


def _balance(state: FleetState) -> Text:
    if state.balance is None:
        return Text("balance: unknown (no controller decision yet, or getbalance failed)", style="dim")
    burn = f"{state.burn_rate * 3600:.2f}/h" if state.burn_rate else "0/h"
    left = state.seconds_to_zero
    runway = "not burning" if left is None else f"{left / 3600:.1f} h to zero at this rate"
    return Text(f"balance: {state.balance:.2f}   burn {burn}   {runway}")
