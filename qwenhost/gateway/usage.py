"""Reading the ledger: totals grouped by model, key or day, and the throughput a local model really delivered
(the basis of "what a million tokens cost you here")."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import String, func, select

from qwenhost.gateway.db import Database
from qwenhost.gateway.prices import nano_to_usd, plain_decimal, usd_per_million
from qwenhost.gateway.schema import ApiKey, LocalCost, Project, UsageRecord

GROUPINGS = ("model", "key", "day", "project")


@dataclass
class UsageRow:
    group: str
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: Decimal

    def as_dict(self) -> dict:
        return {"group": self.group, "requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": plain_decimal(self.cost_usd)}


def usage_report(db: Database, *, project_id: int | None = None, since: dt.datetime | None = None,
                 until: dt.datetime | None = None, by: str | None = None) -> list[UsageRow]:
    if by is not None and by not in GROUPINGS:
        raise ValueError(f"cannot group by {by!r}; use one of {', '.join(GROUPINGS)}")
    u = UsageRecord
    totals = [func.count(u.id), func.coalesce(func.sum(u.prompt_tokens), 0),
              func.coalesce(func.sum(u.cached_tokens), 0), func.coalesce(func.sum(u.completion_tokens), 0),
              func.coalesce(func.sum(u.cost_nusd), 0)]
    by_project = func.coalesce(Project.name, func.cast(u.project_id, String))
    group_col = {"model": u.model, "key": func.coalesce(ApiKey.prefix, "(no key)"),
                 "day": func.date(u.created_at), "project": by_project, None: None}[by]
    q = select(group_col, *totals) if group_col is not None else select(*totals)
    if by == "key":
        q = q.select_from(u).outerjoin(ApiKey, ApiKey.id == u.key_id)
    elif by == "project":  # by name, as people read it (rows whose project row is missing keep its id)
        q = q.select_from(u).outerjoin(Project, Project.id == u.project_id)
    if project_id is not None:
        q = q.where(u.project_id == project_id)
    if since is not None:
        q = q.where(u.created_at >= since)
    if until is not None:
        q = q.where(u.created_at < until)
    if group_col is not None:
        q = q.group_by(group_col).order_by(group_col)
    with db.session() as s:
        rows = s.execute(q).all()
    out = []
    for r in rows:
        g = str(r[0]) if group_col is not None else "total"
        vals = r[1:] if group_col is not None else r
        if group_col is None and vals[0] == 0:
            vals = (0, 0, 0, 0, 0)
        out.append(UsageRow(g, int(vals[0]), int(vals[1]), int(vals[2]), int(vals[3]), nano_to_usd(int(vals[4]))))
    return out


@dataclass
class Throughput:
    tokens: int
    completion_tokens: int
    busy_seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.busy_seconds if self.busy_seconds > 0 else 0.0


def busy_throughput(db: Database, model_names: list[str], since: dt.datetime | None = None) -> Throughput:
    """Tokens served per second of busy time: the union of the requests' [start, start+latency] intervals,
    so concurrent requests share the time they overlap (the hardware is paid per hour, not per request)."""
    u = UsageRecord
    q = select(u.created_at, u.latency_ms, u.prompt_tokens, u.cached_tokens, u.completion_tokens).where(
        u.model.in_(model_names), u.backend == "local").order_by(u.created_at)
    if since is not None:
        q = q.where(u.created_at >= since)
    tokens = completion = 0
    busy = 0.0
    cur_start: dt.datetime | None = None
    cur_end: dt.datetime | None = None
    with db.session() as s:
        for start, lat, prompt, cached, comp in s.execute(q):
            tokens += prompt - cached + comp
            completion += comp
            end = start + dt.timedelta(milliseconds=lat)
            if cur_end is None or start > cur_end:
                if cur_end is not None and cur_start is not None:
                    busy += (cur_end - cur_start).total_seconds()
                cur_start, cur_end = start, end
            elif end > cur_end:
                cur_end = end
    if cur_end is not None and cur_start is not None:
        busy += (cur_end - cur_start).total_seconds()
    return Throughput(tokens, completion, busy)


@dataclass(frozen=True)
class LocalCostReport:
    """A local model's hardware cost beside what the ledger measured: what a million tokens cost here."""

    cost: LocalCost
    throughput: Throughput
    usd_per_million: Decimal | None  # None until local requests with a duration are recorded


def local_cost_reports(db: Database, costs: list[LocalCost]) -> list[LocalCostReport]:
    reports = []
    for lc in costs:
        tp = busy_throughput(db, [lc.model])
        here = usd_per_million(lc.hardware_musd_per_hour, tp.tokens_per_second) if tp.tokens > 0 else None
        reports.append(LocalCostReport(lc, tp, here))
    return reports
