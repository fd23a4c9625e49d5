"""The audit log: admin actions and authentication failures, with who, what and from where (never a key)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from sqlalchemy import select

from qwenhost.gateway.db import Database
from qwenhost.gateway.schema import AuditEvent, utcnow

log = logging.getLogger("qwenhost.audit")
FAILURE_LOG_INTERVAL_S = 1.0  # at most one auth-failure row per remote address per second (a flood stays cheap)


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._last_failure: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, actor: str, action: str, *, project_id: int | None = None, detail: str = "",
               remote: str = "") -> None:
        with self.db.session() as s:
            s.add(AuditEvent(actor=actor, action=action, project_id=project_id, detail=detail[:2000],
                             remote=remote[:64], created_at=utcnow()))
            s.commit()

    def auth_failure(self, code: str, key_prefix: str, remote: str) -> bool:
        """Record a failed authentication unless this address already failed within the last second."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_failure.get(remote, -1e9) < FAILURE_LOG_INTERVAL_S:
                return False
            if len(self._last_failure) > 10000:
                self._last_failure.clear()
            self._last_failure[remote] = now
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
