"""``qwenhost usage`` (what was used and what it cost, from the ledger, as a table or as CSV) and
``qwenhost audit`` (who changed what)."""

from __future__ import annotations

import csv
import sys
from decimal import Decimal

import typer
from rich.console import Console
from rich.markup import escape

from qwenhost.cli.admin import (
    fail,
    fmt_time,
    fmt_usd,
    get_project,
    new_table,
    open_gateway,
    parse_when,
)

NUMBERS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens")


def usage(
    project: str | None = typer.Option(None, "--project", "-p", help="Only this project (name or id)"),
    since: str | None = typer.Option(None, "--since", metavar="DATE",
                                     help="From this date (YYYY-MM-DD, 00:00 UTC) or ISO date and time"),
    until: str | None = typer.Option(None, "--until", metavar="DATE",
                                     help="Up to this date, inclusive (YYYY-MM-DD), or before this ISO date and time"),
    by: str | None = typer.Option(None, "--by", metavar="model|key|day|project", help="Group the totals"),
    as_csv: bool = typer.Option(False, "--csv", help="Write CSV (a header, then one line per group) to stdout"),
) -> None:
    """Requests, tokens and cost recorded in the ledger (times in UTC)."""
    from qwenhost.gateway.usage import GROUPINGS, usage_report

    group = by.strip().lower() if by is not None else None
    if group is not None and group not in GROUPINGS:
        raise fail(f"--by must be one of {', '.join(GROUPINGS)} (got {by!r})")
    start = parse_when(since, "--since") if since is not None else None
    end = parse_when(until, "--until", end_of_day=True) if until is not None else None
    if start is not None and end is not None and end <= start:
        raise fail(f"--until ({fmt_time(end)} UTC) must come after --since ({fmt_time(start)} UTC)")
    with open_gateway() as gw:
        proj = get_project(gw, project) if project is not None else None
        rows = usage_report(gw.db, project_id=proj.id if proj else None, since=start, until=end, by=group)
    label = group or "scope"
    if as_csv:
        from qwenhost.gateway.prices import plain_decimal

        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow([label, *NUMBERS, "cost_usd"])
        for r in rows:
            w.writerow([r.group, r.requests, r.prompt_tokens, r.cached_tokens, r.completion_tokens,
                        plain_decimal(r.cost_usd)])
        return
    scope = [f"project {proj.name}" if proj else "all projects"]
    if start is not None:
        scope.append(f"from {fmt_time(start)}")
    if end is not None:
        scope.append(f"before {fmt_time(end)}")
    out = Console()
    if not rows or sum(r.requests for r in rows) == 0:
        out.print(f"No usage recorded ({escape(', '.join(scope))}).")
        return
    table = new_table(out, f"Usage in tokens: {escape(', '.join(scope))} (UTC)")
    table.add_column(label, overflow="fold")
    for col in ("requests", "prompt", "cached", "completion", "cost"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(escape(r.group), f"{r.requests:,}", f"{r.prompt_tokens:,}", f"{r.cached_tokens:,}",
                      f"{r.completion_tokens:,}", fmt_usd(r.cost_usd))
    if group is not None:
        table.add_section()
        table.add_row("[bold]total[/bold]", *(f"[bold]{sum(getattr(r, n) for r in rows):,}[/bold]" for n in NUMBERS),
                      f"[bold]{fmt_usd(sum((r.cost_usd for r in rows), Decimal(0)))}[/bold]")
    out.print(table)


# -- audit


def audit_list(
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=100_000, help="How many recent rows"),
    project: str | None = typer.Option(None, "--project", "-p", help="Only rows about this project"),
) -> None:
    """Show recent admin actions and failed authentications, newest first."""
    with open_gateway() as gw:
        project_id = get_project(gw, project).id if project is not None else None
        rows = gw.audit.list(project_id=project_id, limit=limit)
        names = {p.id: p.name for p in gw.projects.list()}
    out = Console()
    if not rows:
        out.print("The audit log is empty.")
        return
    table = new_table(out, "Audit log (newest first, times in UTC)")
    wide = out.width >= 120  # narrow terminals: the address goes into the detail, which needs the room
    for col in ("time", "actor", "action", "project", "detail", "remote") if wide else ("time", "actor", "action",
                                                                                      "project", "detail"):
        table.add_column(col, no_wrap=col in ("time", "action"), overflow="fold")
    for r in rows:
        pname = "-" if r.project_id is None else names.get(r.project_id, str(r.project_id))
        cells = [r.created_at.strftime("%Y-%m-%d %H:%M:%S"), escape(r.actor), r.action, escape(pname)]
        if wide:
            cells += [escape(r.detail), escape(r.remote) or "-"]
        else:
            cells.append(escape(r.detail + (f" (from {r.remote})" if r.remote else "")))
        table.add_row(*cells)
    out.print(table)
