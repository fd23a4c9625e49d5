"""The audit log: admin actions and authentication failures, with who, what and from where (never a key)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from sqlalchemy import select

from qwenhost.gateway.db import Database
from qwenhost.gateway.prices import PriceTier, micro_to_usd, nano_to_usd, plain_decimal
from qwenhost.gateway.schema import ApiKey, AuditEvent, Project, utcnow

log = logging.getLogger("qwenhost.audit")
FAILURE_LOG_INTERVAL_S = 1.0  # at most one auth-failure row per address and kind a second (a flood stays cheap)


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._last_failure: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def record(self, actor: str, action: str, *, project_id: int | None = None, detail: str = "",
               remote: str = "") -> None:
        with self.db.session() as s:
            s.add(AuditEvent(actor=actor, action=action, project_id=project_id, detail=detail[:2000],
                             remote=remote[:64], created_at=utcnow()))
            s.commit()

    def auth_failure(self, code: str, key_prefix: str, remote: str) -> bool:
        """Record a failed authentication unless this address failed the same way (``code``: missing, unknown,
        revoked, expired key, not an admin key) within the last second. Per kind, so that a flood of unknown keys
        does not hide a revoked or expired key tried from the same address."""
        now = time.monotonic()
        seen = (remote, code)
        with self._lock:
            if now - self._last_failure.get(seen, -1e9) < FAILURE_LOG_INTERVAL_S:
                return False
            if len(self._last_failure) > 10000:
                self._last_failure.clear()
            self._last_failure[seen] = now
        try:
            self.record("anonymous", "auth.failed", detail=f"{code} key={key_prefix or '-'}", remote=remote)
        except Exception:
            log.exception("could not write an audit row")
        return True

    def list(self, *, project_id: int | None = None, since: dt.datetime | None = None,
             limit: int = 200) -> list[AuditEvent]:
        with self.db.session() as s:
            q = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
            if project_id is not None:
                q = q.where(AuditEvent.project_id == project_id)
            if since is not None:
                q = q.where(AuditEvent.created_at >= since)
            return list(s.scalars(q))


# What an admin action's row says, one format whichever way it came (CLI or HTTP), so that reading the log
# or grepping it never depends on the tool an admin used: `field=value` pairs, amounts as exact decimals,
# "-" for "none".


def limits_detail(rpm: int | None, tpm: int | None, budget_nusd: int | None) -> str:
    budget = "-" if budget_nusd is None else plain_decimal(nano_to_usd(budget_nusd))
    return f"rpm={rpm or '-'} tpm={tpm or '-'} budget_usd={budget}"


def project_detail(p: Project) -> str:
    return f"name={p.name} " + limits_detail(p.rpm, p.tpm, p.monthly_budget_nusd)


def key_detail(k: ApiKey) -> str:
    expires = k.expires_at.strftime("%Y-%m-%d %H:%M") if k.expires_at is not None else "-"
    return (f"prefix={k.prefix} name={k.name!r} admin={k.is_admin} expires={expires} "
            + limits_detail(k.rpm, k.tpm, k.monthly_budget_nusd))


def key_revoke_detail(k: ApiKey) -> str:
    return f"prefix={k.prefix} name={k.name!r}"


def price_detail(model: str, tier: PriceTier) -> str:
    return (f"model={model} up_to={tier.up_to_tokens if tier.up_to_tokens is not None else '-'} "
            f"input_usd={plain_decimal(micro_to_usd(tier.input_musd))} "
            f"cached_usd={plain_decimal(micro_to_usd(tier.cached_musd))} "
            f"output_usd={plain_decimal(micro_to_usd(tier.output_musd))}")


def price_remove_detail(model: str, tiers: int) -> str:
    return f"model={model} tiers={tiers}"


def local_cost_detail(model: str, hardware_musd_per_hour: int, compare_to: str | None) -> str:
    return (f"model={model} usd_per_hour={plain_decimal(micro_to_usd(hardware_musd_per_hour))} "
            f"compare_to={compare_to or '-'}")


def local_cost_remove_detail(model: str) -> str:
    return f"model={model}"
