"""``qwenhost projects`` and ``qwenhost keys``: the gateway's admin commands, plus the helpers the other admin
commands (prices, usage, audit) share. Every change writes an audit row; secrets are printed once and never
stored or logged."""

from __future__ import annotations

import datetime as dt
import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qwenhost.gateway.widths import INT32_MAX

if TYPE_CHECKING:
    from qwenhost.gateway.schema import Project
    from qwenhost.gateway.service import Gateway

projects_app = typer.Typer(help="Create and list projects (they own keys, usage, limits and budgets).",
                           no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)

err = Console(stderr=True)
BIGINT_MAX = 2**63 - 1


def fail(message: str) -> typer.Exit:
    # Expected failures get one readable line and exit code 2 (like click's usage errors), never a traceback.
    err.print(f"[bold red]error:[/bold red] {escape(message)}")
    return typer.Exit(code=2)


@contextmanager
def open_gateway() -> Iterator[Gateway]:
    """The gateway on the configured database, closed when the command ends."""
    # Imported here: SQLAlchemy and the gateway add ~150 ms to every `qwenhost` start, admin or not.
    from sqlalchemy.exc import SQLAlchemyError

    from qwenhost.gateway.db import Database, DatabaseError
    from qwenhost.gateway.service import Gateway

    try:
        # Admin commands never count requests, so no counter store is needed: "memory" keeps a misconfigured
        # QWENHOST_LIMITS / QWENHOST_REDIS_URL from locking the admin out of the database.
        gw = Gateway(Database(), limits_mode="memory")
    except (DatabaseError, ValueError) as exc:
        raise fail(str(exc)) from None
    try:
        yield gw
    except SQLAlchemyError as exc:
        # The driver's own message only: SQLAlchemy's text carries the statement's parameters (key hashes).
        orig = getattr(exc, "orig", None)
        reason = str(orig).strip().splitlines()[0] if orig is not None and str(orig).strip() else type(exc).__name__
        raise fail(f"the database refused the change: {reason}") from None
    finally:
        gw.close()


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # a container user with no passwd entry and no $USER
        return "cli:unknown"


def audit(gw: Gateway, action: str, *, project_id: int | None = None, detail: str = "") -> None:
    gw.audit.record(actor(), action, project_id=project_id, detail=detail)


def parse_usd(value: str, option: str) -> int:
    """A dollar amount given on the command line, in micro-USD."""
    from qwenhost.gateway.prices import usd_to_micro

    text = value.strip()
    text = text[1:] if text.startswith("$") else text
    try:
        musd = usd_to_micro(text, option)
    except ValueError as exc:
        raise fail(f"{exc}; give an amount in US dollars, like 25 or 2.50") from None
    if musd * 1000 > BIGINT_MAX:
        raise fail(f"{option} is too large (got {value!r})")
    return musd


def parse_budget(value: str | None, option: str = "--budget") -> int | None:
    """A monthly budget in US dollars, in nano-USD (the unit the ledger sums)."""
    return None if value is None else parse_usd(value, option) * 1000


def parse_when(value: str, option: str, *, end_of_day: bool = False) -> dt.datetime:
    """YYYY-MM-DD or an ISO date and time, as naive UTC (how the database stores times). A bare date means its
    00:00 UTC, or with ``end_of_day`` the start of the next day (so `--until 2026-03-31` includes that day)."""
    text = value.strip()
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        day = None
    try:
        if day is not None:
            t = dt.datetime(day.year, day.month, day.day)
            return t + dt.timedelta(days=1) if end_of_day else t
        t = dt.datetime.fromisoformat(text)
        return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo is not None else t
    except (ValueError, OverflowError):  # OverflowError: the day after 9999-12-31, or an offset past it
        raise fail(f"{option} must be a date like 2026-03-31 or an ISO date and time like 2026-03-31T18:00 "
                   f"(UTC unless it carries an offset); got {value!r}") from None


def limit_or_none(n: int | None) -> int | None:
    # The rate limiter treats 0 as "no limit"; storing None says so in listings too.
    return n or None


def fmt_time(t: dt.datetime | None) -> str:
    """Minutes, or seconds where a time has them (a key expiring at 09:04:55 is not shown as 09:04)."""
    if t is None:
        return "-"
    return t.strftime("%Y-%m-%d %H:%M" if t.second == 0 and t.microsecond == 0 else "%Y-%m-%d %H:%M:%S")


def fmt_day(t: dt.datetime | None) -> str:
    return t.strftime("%Y-%m-%d") if t is not None else "-"


def new_table(out: Console, title: str) -> Table:
    # Below 120 terminal columns, box-drawing borders take width the data needs (80 is common, and what rich
    # assumes when stdout is not a terminal): use rules between header and rows only.
    if out.width >= 120:
        return Table(title=title, title_justify="left")
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)


def fmt_usd(d: Decimal | None) -> str:
    """Dollars with cents, and with every further digit there is (costs are often fractions of a cent)."""
    from qwenhost.gateway.prices import plain_decimal

    if d is None:
        return "-"
    plain = plain_decimal(d)
    return f"${d:.2f}" if "." not in plain or len(plain.split(".")[1]) <= 2 else f"${plain}"


def fmt_nusd(n: int | None) -> str:
    from qwenhost.gateway.prices import nano_to_usd

    return "-" if n is None else fmt_usd(nano_to_usd(n))


def fmt_count(n: int | None) -> str:
    return f"{n:,}" if n else "-"


def get_project(gw: Gateway, ref: str) -> Project:
    try:
        return gw.projects.get(ref)
    except KeyError:
        raise fail(f"no project {ref!r}; create it with `qwenhost projects create {ref}` "
                   "(`qwenhost projects list` shows the existing ones)") from None


def _rpm(what: str) -> int | None:
    return typer.Option(None, "--rpm", min=0, max=INT32_MAX, help=f"Requests per minute for {what} (0 = no limit)")


def _tpm(what: str) -> int | None:
    return typer.Option(None, "--tpm", min=0, max=INT32_MAX, help=f"Tokens per minute for {what} (0 = no limit)")


def _budget(what: str) -> str | None:
    return typer.Option(None, "--budget", metavar="USD",
                        help=f"Monthly spending limit for {what} in US dollars, e.g. 25 or 2.50 (a hard stop)")


# -- projects


@projects_app.command("create")
def projects_create(
    name: str = typer.Argument(..., help="Letters, digits, '.', '_' or '-'"),
    rpm: int | None = _rpm("the whole project"),
    tpm: int | None = _tpm("the whole project"),
    budget: str | None = _budget("the whole project"),
) -> None:
    """Create a project; its keys share its limits and budget."""
    from qwenhost.gateway.audit import project_detail

    budget_nusd = parse_budget(budget)
    with open_gateway() as gw:
        try:
            row = gw.projects.create(name, rpm=limit_or_none(rpm), tpm=limit_or_none(tpm), budget_nusd=budget_nusd)
        except ValueError as exc:
            raise fail(str(exc)) from None
        audit(gw, "project.create", project_id=row.id, detail=project_detail(row))
    Console().print(f"Created project [bold]{escape(row.name)}[/bold] (id {row.id}). "
                    f"Next: `qwenhost keys create --project {escape(row.name)}`")


@projects_app.command("list")
def projects_list() -> None:
    """Show projects with their limits and this month's spend."""
    from qwenhost.gateway.ledger import month_of
    from qwenhost.gateway.schema import utcnow

    month = month_of(utcnow())
    with open_gateway() as gw:
        rows = [(p, gw.ledger.spend("project", p.id, month)) for p in gw.projects.list()]
    out = Console()
    if not rows:
        out.print("No projects yet. Create one with `qwenhost projects create NAME`.")
        return
    table = new_table(out, f"Projects (spent: month to date, {month} UTC)")
    for col in ("id", "name", "created", "rpm", "tpm", "monthly budget", "spent"):
        table.add_column(col, justify="right" if col not in ("name", "created") else "left",
                         no_wrap=col != "name", overflow="fold")
    for p, spent in rows:
        table.add_row(str(p.id), escape(p.name), fmt_day(p.created_at), fmt_count(p.rpm), fmt_count(p.tpm),
                      fmt_nusd(p.monthly_budget_nusd), fmt_nusd(spent))
    out.print(table)


@projects_app.command("limits")
def projects_limits(
    name: str = typer.Argument(..., help="Project name or id"),
    rpm: int | None = _rpm("the whole project"),
    tpm: int | None = _tpm("the whole project"),
    budget: str | None = typer.Option(None, "--budget", metavar="USD",
                                      help="Monthly spending limit in US dollars, or 'none' to remove it"),
    clear: bool = typer.Option(False, "--clear", help="Remove every limit (then apply any given with it)"),
) -> None:
    """Change a project's rate limits and monthly budget."""
    from qwenhost.gateway.audit import project_detail

    if not clear and rpm is None and tpm is None and budget is None:
        raise fail("nothing to change: give --rpm, --tpm, --budget or --clear")
    from qwenhost.gateway.prices import removes_limit

    changes: dict[str, int | None] = {}
    if rpm is not None:
        changes["rpm"] = limit_or_none(rpm)
    if tpm is not None:
        changes["tpm"] = limit_or_none(tpm)
    if budget is not None:
        changes["budget_nusd"] = None if removes_limit(budget) else parse_budget(budget)
    with open_gateway() as gw:
        proj = get_project(gw, name)
        row = gw.projects.update_limits(proj.id, changes, clear=clear)
        audit(gw, "project.limits", project_id=row.id, detail=project_detail(row))
    Console().print(f"Project [bold]{escape(row.name)}[/bold]: rpm {fmt_count(row.rpm)}, tpm {fmt_count(row.tpm)}, "
                    f"monthly budget {fmt_nusd(row.monthly_budget_nusd)}")


# -- keys


@keys_app.command("create")
def keys_create(
    project: str = typer.Option(..., "--project", "-p", help="Project name or id"),
    name: str = typer.Option("", "--name", help="A label to recognise the key by (who or what uses it)"),
    rpm: int | None = _rpm("this key"),
    tpm: int | None = _tpm("this key"),
    budget: str | None = _budget("this key"),
    expires: str | None = typer.Option(None, "--expires", metavar="DATE",
                                       help="YYYY-MM-DD (00:00 UTC that day) or an ISO date and time, in UTC"),
    admin: bool = typer.Option(False, "--admin", help="Let the key use the admin API"),
) -> None:
    """Create an API key and print it once on stdout (capture it with `KEY=$(qwenhost keys create ...)`)."""
    from qwenhost.gateway.audit import key_detail
    from qwenhost.gateway.schema import utcnow

    if len(name) > 100:
        raise fail(f"--name is {len(name)} characters long; use at most 100")
    budget_nusd = parse_budget(budget)
    expires_at = None
    if expires is not None:
        expires_at = parse_when(expires, "--expires")
        if expires_at <= utcnow():
            raise fail(f"--expires must be in the future (got {fmt_time(expires_at)} UTC; "
                       f"it is now {fmt_time(utcnow())} UTC)")
    with open_gateway() as gw:
        proj = get_project(gw, project)
        first = not gw.keys.any_exist()
        created = gw.keys.create(proj.id, name=name, is_admin=admin, rpm=limit_or_none(rpm),
                                 tpm=limit_or_none(tpm), budget_nusd=budget_nusd, expires_at=expires_at)
        k = created.row
        audit(gw, "key.create", project_id=proj.id, detail=key_detail(k))
    err.print(f"Created {'admin ' if admin else ''}key [bold]{k.prefix}[/bold] for project "
              f"[bold]{escape(proj.name)}[/bold]"
              + (f", expiring {fmt_time(k.expires_at)} UTC" if k.expires_at else "")
              + ". The full key is below: [bold]store it now; it is not shown again.[/bold]")
    if first:
        err.print("[yellow]This is the first key:[/yellow] servers now require an API key on every request, "
                  "including on localhost.")
    # The key alone on stdout, unstyled, so `$(...)` captures exactly the key.
    typer.echo(created.key)


@keys_app.command("list")
def keys_list(project: str | None = typer.Option(None, "--project", "-p", help="Only this project's keys")) -> None:
    """Show keys by their prefix (secrets are never stored, so never shown)."""
    from qwenhost.gateway.schema import utcnow

    with open_gateway() as gw:
        project_id = get_project(gw, project).id if project is not None else None
        rows = gw.keys.list(project_id)
    out = Console()
    if not rows:
        out.print("No API keys yet. Create one with `qwenhost keys create --project NAME`.")
        return
    now = utcnow()
    # Ten columns do not fit 80 terminal columns: narrow terminals get one status column instead of the three
    # dates and one limits column instead of three (like `models list` dropping its file column).
    wide = out.width >= 120
    cols = (["prefix", "project", "name", "admin", "created", "expires", "revoked", "rpm", "tpm", "budget"] if wide
            else ["prefix", "project", "name", "admin", "status", "limits"])
    table = new_table(out, "API keys (times in UTC)")
    for col in cols:
        table.add_column(col, justify="right" if col in ("rpm", "tpm", "budget") else "left",
                         no_wrap=col not in ("project", "name", "limits", "status"), overflow="fold")
    for k, pname in rows:
        expired = k.expires_at is not None and k.expires_at <= now
        row = [k.prefix, escape(pname), escape(k.name) or "-", "yes" if k.is_admin else "no"]
        if wide:
            expires = f"[red]{fmt_time(k.expires_at)} (expired)[/red]" if expired else fmt_time(k.expires_at)
            row += [fmt_time(k.created_at), expires, f"[red]{fmt_time(k.revoked_at)}[/red]" if k.revoked_at else "-",
                    fmt_count(k.rpm), fmt_count(k.tpm), fmt_nusd(k.monthly_budget_nusd)]
        else:
            status = (f"[red]revoked {fmt_day(k.revoked_at)}[/red]" if k.revoked_at
                      else f"[red]expired {fmt_day(k.expires_at)}[/red]" if expired
                      else f"until {fmt_day(k.expires_at)}" if k.expires_at else "active")
            limits = [f"{k.rpm:,} rpm" if k.rpm else "", f"{k.tpm:,} tpm" if k.tpm else "",
                      f"{fmt_nusd(k.monthly_budget_nusd)}/month" if k.monthly_budget_nusd is not None else ""]
            row += [status, ", ".join(x for x in limits if x) or "-"]
        table.add_row(*row)
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(prefix: str = typer.Argument(..., help="The key's prefix (qh-1a2b3c4d) or the whole key")) -> None:
    """Revoke a key; servers refuse it within seconds."""
    from qwenhost.gateway.audit import key_revoke_detail
    from qwenhost.gateway.keys import KEY_PREFIX, PREFIX_LEN

    visible = prefix.strip()[:PREFIX_LEN]  # never echo a secret that was pasted in whole
    if not visible.startswith(KEY_PREFIX) or len(visible) != PREFIX_LEN:
        raise fail(f"{visible!r} is not a key prefix: they look like qh-1a2b3c4d (`qwenhost keys list` shows them)")
    with open_gateway() as gw:
        known = {k.prefix: k for k, _ in gw.keys.list()}
        before = known.get(visible)
        if before is None:
            raise fail(f"no key {visible!r}; `qwenhost keys list` shows the keys there are")
        if before.revoked_at is not None:
            Console().print(f"Key {visible} was already revoked on {fmt_time(before.revoked_at)} UTC.")
            return
        row = gw.keys.revoke(visible)
        audit(gw, "key.revoke", project_id=row.project_id, detail=key_revoke_detail(row))
    Console().print(f"Revoked key [bold]{row.prefix}[/bold]. Servers refuse it within a few seconds.")
