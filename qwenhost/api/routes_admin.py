"""Admin routes (/admin/..., admin keys only) and what any key may read about itself (/v1/me, /v1/usage).

A project key only ever sees its own project's data; admin keys operate the whole server.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from qwenhost.api.metering import admin_principal, gateway_of, principal
from qwenhost.gateway.audit import (
    key_detail,
    key_revoke_detail,
    local_cost_detail,
    local_cost_remove_detail,
    price_detail,
    price_remove_detail,
    project_detail,
)
from qwenhost.gateway.keys import Principal
from qwenhost.gateway.ledger import month_of
from qwenhost.gateway.prices import micro_to_usd, nano_to_usd, plain_decimal, removes_limit, usd_to_micro
from qwenhost.gateway.schema import ApiKey, Project
from qwenhost.gateway.usage import local_cost_reports, usage_report
from qwenhost.gateway.widths import MODEL_NAME_MAX, check_model_name
from qwenhost.router.local import RequestError

router = APIRouter()
admin = APIRouter(prefix="/admin", dependencies=[Depends(admin_principal)])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ProjectIn(_Body):
    name: str = Field(min_length=1, max_length=100)
    rpm: int | None = Field(default=None, ge=0)  # 0 or null: no limit, as in the CLI
    tpm: int | None = Field(default=None, ge=0)
    budget_usd: float | str | None = None


class LimitsIn(_Body):
    """A merge patch: a limit left out stays, null (or 0 for rpm/tpm, "none" for the budget) removes it."""

    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    budget_usd: float | str | None = None
    clear: bool = False


class KeyIn(_Body):
    project: str | int
    name: str = Field(default="", max_length=100)
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    budget_usd: float | str | None = None
    expires_at: str | None = None  # ISO date or datetime, UTC
    admin: bool = False


class PriceIn(_Body):
    input: float | str
    output: float | str
    cached: float | str | None = None
    up_to_tokens: int | None = Field(default=None, ge=1)


class LocalCostIn(_Body):
    per_hour_usd: float | str
    compare_to: str | None = Field(default=None, min_length=1, max_length=MODEL_NAME_MAX)


def _bad(message: str, param: str | None = None) -> RequestError:
    return RequestError(400, message, param=param)


def _nusd(usd: float | str | None, param: str) -> int | None:
    """A budget in nano-USD; None for no budget (null, "none", "off"). A budget of 0 is a hard stop."""
    if removes_limit(usd):
        return None
    try:
        return usd_to_micro(usd, param) * 1000
    except ValueError as exc:
        raise _bad(str(exc), param) from exc


def _date(value: str | None, param: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise _bad(f"{param} must be an ISO date like 2026-11-01 or 2026-11-01T12:00:00 (got {value!r})",
                   param) from exc
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t


def _money(n: int | None) -> str | None:
    return None if n is None else plain_decimal(nano_to_usd(n))


def _limit_changes(body: LimitsIn) -> dict[str, int | None]:
    given = body.model_fields_set
    changes: dict[str, int | None] = {}
    if "rpm" in given:
        changes["rpm"] = body.rpm or None  # the limiter reads 0 as no limit; stored as None it lists as none
    if "tpm" in given:
        changes["tpm"] = body.tpm or None
    if "budget_usd" in given:
        changes["budget_nusd"] = _nusd(body.budget_usd, "budget_usd")
    if not changes and not body.clear:
        raise _bad("nothing to change: give rpm, tpm or budget_usd (null removes one), or clear: true")
    return changes


def _project_json(p: Project, spent: int) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "created_at": p.created_at.isoformat() + "Z", "rpm": p.rpm, "tpm": p.tpm,
            "monthly_budget_usd": _money(p.monthly_budget_nusd), "month_spend_usd": _money(spent)}


def _key_json(k: ApiKey, project_name: str) -> dict[str, Any]:
    iso = lambda t: t.isoformat() + "Z" if t else None  # noqa: E731
    return {"id": k.id, "prefix": k.prefix, "project": project_name, "project_id": k.project_id, "name": k.name,
            "admin": k.is_admin, "created_at": iso(k.created_at), "expires_at": iso(k.expires_at),
            "revoked_at": iso(k.revoked_at), "rpm": k.rpm, "tpm": k.tpm,
            "monthly_budget_usd": _money(k.monthly_budget_nusd)}


def _usage(request: Request, project_id: int | None, since: str | None, until: str | None,
           by: str | None) -> dict[str, Any]:
    try:
        rows = usage_report(gateway_of(request).db, project_id=project_id, since=_date(since, "since"),
                            until=_date(until, "until"), by=by)
    except ValueError as exc:
        raise _bad(str(exc), "by") from exc
    return {"object": "list", "by": by, "data": [r.as_dict() for r in rows]}


def _remote(request: Request) -> str:
    return request.client.host if request.client else ""


# ---------------------------------------------------------------- any key: itself

@router.get("/v1/me")
def me(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    gw = gateway_of(request)
    month = month_of(dt.datetime.now(dt.UTC))
    out: dict[str, Any] = {"project": who.project_name, "key": who.key_prefix or None, "admin": who.is_admin,
                           "rpm": who.rpm, "tpm": who.tpm, "monthly_budget_usd": _money(who.budget_nusd),
                           "project_rpm": who.project_rpm, "project_tpm": who.project_tpm,
                           "project_monthly_budget_usd": _money(who.project_budget_nusd), "month": month,
                           "project_month_spend_usd": _money(gw.ledger.spend("project", who.project_id, month))}
    if who.key_id is not None:
        out["key_month_spend_usd"] = _money(gw.ledger.spend("key", who.key_id, month))
    return out


@router.get("/v1/usage")
def own_usage(request: Request, since: str | None = None, until: str | None = None, by: str | None = None,
              who: Principal = Depends(principal)) -> dict[str, Any]:
    """Usage of the caller's own project (never another's)."""
    return _usage(request, who.project_id, since, until, by)


# ---------------------------------------------------------------- admin

@admin.get("/projects")
def list_projects(request: Request) -> dict[str, Any]:
    gw = gateway_of(request)
    month = month_of(dt.datetime.now(dt.UTC))
    return {"object": "list", "data": [_project_json(p, gw.ledger.spend("project", p.id, month))
                                       for p in gw.projects.list()]}


@admin.post("/projects", status_code=201)
def create_project(body: ProjectIn, request: Request, who: Principal = Depends(admin_principal)) -> dict[str, Any]:
    gw = gateway_of(request)
    try:
        p = gw.projects.create(body.name, rpm=body.rpm or None, tpm=body.tpm or None,
                               budget_nusd=_nusd(body.budget_usd, "budget_usd"))
    except ValueError as exc:
        raise _bad(str(exc), "name") from exc
    gw.audit.record(who.actor, "project.create", project_id=p.id, detail=project_detail(p), remote=_remote(request))
    return _project_json(p, 0)


@admin.patch("/projects/{ref}")
def update_project(ref: str, body: LimitsIn, request: Request,
                   who: Principal = Depends(admin_principal)) -> dict[str, Any]:
    gw = gateway_of(request)
    try:
        p = gw.projects.update_limits(ref, _limit_changes(body), clear=body.clear)
    except KeyError as exc:
        raise RequestError(404, exc.args[0], err_type="not_found_error") from exc
    gw.audit.record(who.actor, "project.limits", project_id=p.id, detail=project_detail(p), remote=_remote(request))
    return _project_json(p, gw.ledger.spend("project", p.id, month_of(dt.datetime.now(dt.UTC))))


@admin.get("/keys")
def list_keys(request: Request, project: str | None = None) -> dict[str, Any]:
    gw = gateway_of(request)
    pid = None
    if project is not None:
        try:
            pid = gw.projects.get(project).id
        except KeyError as exc:
            raise RequestError(404, exc.args[0], param="project", err_type="not_found_error") from exc
    return {"object": "list", "data": [_key_json(k, pname) for k, pname in gw.keys.list(pid)]}


@admin.post("/keys", status_code=201)
def create_key(body: KeyIn, request: Request, who: Principal = Depends(admin_principal)) -> dict[str, Any]:
    gw = gateway_of(request)
    try:
        proj = gw.projects.get(body.project)
    except KeyError as exc:
        raise RequestError(404, exc.args[0], param="project", err_type="not_found_error") from exc
    expires = _date(body.expires_at, "expires_at")
    if expires is not None and expires <= dt.datetime.now(dt.UTC).replace(tzinfo=None):
        raise _bad("expires_at is in the past; give a future date", "expires_at")
    created = gw.keys.create(proj.id, name=body.name, is_admin=body.admin, rpm=body.rpm or None, tpm=body.tpm or None,
                             budget_nusd=_nusd(body.budget_usd, "budget_usd"), expires_at=expires)
    gw.audit.record(who.actor, "key.create", project_id=proj.id, detail=key_detail(created.row),
                    remote=_remote(request))
    return {**_key_json(created.row, proj.name), "key": created.key}


@admin.delete("/keys/{prefix}")
def revoke_key(prefix: str, request: Request, who: Principal = Depends(admin_principal)) -> dict[str, Any]:
    gw = gateway_of(request)
    try:
        row = gw.keys.revoke(prefix)
    except KeyError as exc:
        raise RequestError(404, exc.args[0], err_type="not_found_error") from exc
    gw.audit.record(who.actor, "key.revoke", project_id=row.project_id, detail=key_revoke_detail(row),
                    remote=_remote(request))
    return {"prefix": row.prefix, "revoked": True}


@admin.get("/usage")
def all_usage(request: Request, project: str | None = None, since: str | None = None, until: str | None = None,
              by: str | None = None) -> dict[str, Any]:
    pid = None
    if project is not None:
        try:
            pid = gateway_of(request).projects.get(project).id
        except KeyError as exc:
            raise RequestError(404, exc.args[0], param="project", err_type="not_found_error") from exc
    return _usage(request, pid, since, until, by)


@admin.get("/prices")
def list_prices(request: Request) -> dict[str, Any]:
    data = []
    for model, tiers in sorted(gateway_of(request).prices.all().items()):
        for t in tiers:
            data.append({"model": model, "up_to_tokens": t.up_to_tokens,
                         "input_per_m_usd": plain_decimal(micro_to_usd(t.input_musd)),
                         "cached_input_per_m_usd": plain_decimal(micro_to_usd(t.cached_musd)),
                         "output_per_m_usd": plain_decimal(micro_to_usd(t.output_musd))})
    return {"object": "list", "data": data}


@admin.put("/prices/{model:path}")
def set_price(model: str, body: PriceIn, request: Request, who: Principal = Depends(admin_principal)) -> dict:
    gw = gateway_of(request)
    try:
        tier = gw.prices.set(model, input_usd=str(body.input), output_usd=str(body.output),
                             cached_usd=None if body.cached is None else str(body.cached),
                             up_to_tokens=body.up_to_tokens)
    except ValueError as exc:
        raise _bad(str(exc)) from exc
    gw.audit.record(who.actor, "price.set", detail=price_detail(model, tier), remote=_remote(request))
    return {"model": model, "updated": True}


@admin.delete("/prices/{model:path}")
def remove_price(model: str, request: Request, who: Principal = Depends(admin_principal)) -> dict:
    gw = gateway_of(request)
    n = gw.prices.remove(model)
    if n == 0:
        raise RequestError(404, f"no price for model {model!r}", err_type="not_found_error")
    gw.audit.record(who.actor, "price.remove", detail=price_remove_detail(model, n), remote=_remote(request))
    return {"model": model, "removed": n}


@admin.get("/local-costs")
def list_local_costs(request: Request) -> dict[str, Any]:
    """Own hardware: what it costs per hour, the throughput measured from the ledger, and so per million."""
    gw = gateway_of(request)
    data = []
    for r in local_cost_reports(gw.db, gw.prices.local_costs()):
        data.append({"model": r.cost.model, "per_hour_usd": plain_decimal(micro_to_usd(r.cost.hardware_musd_per_hour)),
                     "compare_to": r.cost.compare_to, "tokens": r.throughput.tokens,
                     "busy_seconds": round(r.throughput.busy_seconds, 3),
                     "per_m_usd": None if r.usd_per_million is None else plain_decimal(r.usd_per_million)})
    return {"object": "list", "data": data}


@admin.put("/local-costs/{model:path}")
def set_local_cost(model: str, body: LocalCostIn, request: Request,
                   who: Principal = Depends(admin_principal)) -> dict[str, Any]:
    gw = gateway_of(request)
    try:
        check_model_name(model)
    except ValueError as exc:
        raise _bad(str(exc)) from exc
    try:
        musd = usd_to_micro(body.per_hour_usd, "per_hour_usd")
        gw.prices.set_local_cost(model, str(micro_to_usd(musd)), body.compare_to)
    except ValueError as exc:
        raise _bad(str(exc), "per_hour_usd") from exc
    gw.audit.record(who.actor, "price.local", detail=local_cost_detail(model, musd, body.compare_to),
                    remote=_remote(request))
    return {"model": model, "updated": True}


@admin.delete("/local-costs/{model:path}")
def remove_local_cost(model: str, request: Request, who: Principal = Depends(admin_principal)) -> dict[str, Any]:
    gw = gateway_of(request)
    if not gw.prices.remove_local_cost(model):
        raise RequestError(404, f"no hardware cost is recorded for model {model!r}", err_type="not_found_error")
    gw.audit.record(who.actor, "price.local_remove", detail=local_cost_remove_detail(model),
                    remote=_remote(request))
    return {"model": model, "removed": True}


@admin.get("/audit")
def audit(request: Request, limit: int = Query(200, ge=1, le=5000), since: str | None = None) -> dict[str, Any]:
    rows = gateway_of(request).audit.list(since=_date(since, "since"), limit=limit)
    return {"object": "list", "data": [{"id": r.id, "created_at": r.created_at.isoformat() + "Z", "actor": r.actor,
                                        "action": r.action, "project_id": r.project_id, "detail": r.detail,
                                        "remote": r.remote} for r in rows]}


router.include_router(admin)
