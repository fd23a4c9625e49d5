"""SQLite's ledger writes on the sqlite3 connection (qwenhost/gateway/sqlite_ledger.py): rows read back through
SQLAlchemy exactly as SQLAlchemy itself would have stored them, duplicates are skipped and spend counts only
inserted rows, batches larger than one statement are split, and a failed batch leaves nothing behind."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from qwenhost.gateway.db import Database
from qwenhost.gateway.ledger import UsageEntry, UsageLedger
from qwenhost.gateway.schema import Spend, UsageRecord


@pytest.fixture()
def sqlite_ledger(tmp_path: Path) -> Iterator[UsageLedger]:
    db = Database(f"sqlite:///{tmp_path / 'ledger.db'}")
    db.migrate()
    led = UsageLedger(db)
    yield led
    led.close()
    db.close()


def entry(rid: str, at: dt.datetime, cost: int = 5, key_id: int | None = 9) -> UsageEntry:
    return UsageEntry(rid, at, 3, key_id, "qwen-m", "echo", 11, 2, 13, cost, 17, "completed")


def rows(led: UsageLedger) -> dict[str, UsageRecord]:
    with led.db.session() as s:
        return {r.request_id: r for r in s.scalars(select(UsageRecord))}


def spend(led: UsageLedger) -> dict[tuple[str, int, str], int]:
    with led.db.session() as s:
        return {(r.scope, r.scope_id, r.month): r.cost_nusd for r in s.scalars(select(Spend))}


def test_rows_read_back_as_sqlalchemy_stores_them(sqlite_ledger: UsageLedger) -> None:
    whole_second = dt.datetime(2026, 11, 24, 7, 0, 0)  # isoformat() would drop the microseconds here
    fraction = dt.datetime(2026, 12, 1, 0, 0, 1, 250)
    sqlite_ledger.record_sync(entry("a", whole_second))
    sqlite_ledger.record_sync(entry("b", fraction, key_id=None))
    got = rows(sqlite_ledger)
    assert got["a"].created_at == whole_second and got["b"].created_at == fraction
    assert (got["a"].key_id, got["b"].key_id) == (9, None)
    a = got["a"]
    assert (a.project_id, a.model, a.backend, a.prompt_tokens, a.cached_tokens, a.completion_tokens, a.cost_nusd,
            a.latency_ms, a.status) == (3, "qwen-m", "echo", 11, 2, 13, 5, 17, "completed")
    # The text on disk is what SQLAlchemy writes for the same values, so range queries compare like for like.
    with sqlite_ledger.db.engine.begin() as c:
        for rid, at in (("sa-a", whole_second), ("sa-b", fraction)):
            c.execute(insert(UsageRecord).values(request_id=rid, created_at=at, project_id=3, key_id=None,
                                                 model="m", backend="b", prompt_tokens=0, cached_tokens=0,
                                                 completion_tokens=0, cost_nusd=0, latency_ms=0, status="completed"))
    con = sqlite3.connect(sqlite_ledger.db.engine.url.database)
    stored = dict(con.execute("SELECT request_id, created_at FROM usage"))
    con.close()
    assert (stored["a"], stored["b"]) == (stored["sa-a"], stored["sa-b"])
    assert stored["b"] == "2026-12-01 00:00:01.000250"
    with sqlite_ledger.db.session() as s:
        after = s.scalars(select(UsageRecord.request_id).where(UsageRecord.created_at > whole_second)).all()
    assert sorted(after) == ["b", "sa-b"]
    assert spend(sqlite_ledger) == {("key", 9, "2026-11"): 5, ("project", 3, "2026-11"): 5,
                                    ("project", 3, "2026-12"): 5}


def test_a_duplicate_is_skipped_and_not_spent_twice(sqlite_ledger: UsageLedger) -> None:
    at = dt.datetime(2026, 11, 24, 8)
    told: list[dict] = []  # type: ignore[type-arg]
    sqlite_ledger.on_spend(told.append)
    sqlite_ledger.record_sync(entry("x", at, cost=100))
    sqlite_ledger.record_sync(entry("x", at, cost=100))
    assert list(rows(sqlite_ledger)) == ["x"]
    assert spend(sqlite_ledger)[("project", 3, "2026-11")] == 100
    assert sum(v for d in told for v in d.values()) == 200  # the key's and the project's, once
    assert sqlite_ledger.rows_written == 1


def test_a_batch_larger_than_one_statement(sqlite_ledger: UsageLedger) -> None:
    at = dt.datetime(2026, 11, 24, 9)
    batch = [entry(f"r{i}", at, cost=1) for i in range(1200)] + [entry("r5", at, cost=1)]  # one repeat
    deltas = sqlite_ledger._write(batch)
    assert len(rows(sqlite_ledger)) == 1200 and sqlite_ledger.rows_written == 1200
    assert deltas == {("key", 9, "2026-11"): 1200, ("project", 3, "2026-11"): 1200}
    assert spend(sqlite_ledger) == deltas


def test_a_failed_batch_leaves_nothing_and_the_next_one_commits(sqlite_ledger: UsageLedger,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    at = dt.datetime(2026, 11, 24, 10)
    writer = sqlite_ledger._sqlite
    assert writer is not None

    def broken(_ids: list[str]) -> dict:  # type: ignore[type-arg]
        raise RuntimeError("spend failed after the rows were inserted")

    with pytest.raises(RuntimeError):
        writer.write([tuple(getattr(entry("lost", at), f) for f in ("request_id", "created_at", "project_id",
                                                                     "key_id", "model", "backend", "prompt_tokens",
                                                                     "cached_tokens", "completion_tokens",
                                                                     "cost_nusd", "latency_ms", "status"))],
                     broken)
    assert rows(sqlite_ledger) == {}  # rolled back with its transaction
    sqlite_ledger.record_sync(entry("kept", at))
    assert list(rows(sqlite_ledger)) == ["kept"] and spend(sqlite_ledger)[("project", 3, "2026-11")] == 5
