"""The ledger's SQLite writes on the DB-API connection itself.

Through SQLAlchemy (engine.begin, two Core statements, the commit) a one-row batch cost about 127 µs of CPU; the
same statements on the sqlite3 connection cost 43 µs. On a lightly loaded server every request waits for a
one-row batch, with the GIL held for most of it, so this is a tenth of what the gateway adds to a request.

The statements are written from the tables' metadata, and values go through the columns' own SQLAlchemy bind
processors, so a row stored here is byte for byte what SQLAlchemy would store and reads back the same.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine

from qwenhost.gateway.schema import Spend, UsageRecord

# RETURNING needs SQLite 3.35, which also allows 32,766 parameters: a 512-row batch of 12 columns uses 6,144.
_MAX_ROWS_PER_STATEMENT = 512


class SqliteLedgerWriter:
    """Writes batches of ledger rows and their spend in one transaction, on one connection of its own (the
    ledger's writer thread is its only user)."""

    def __init__(self, engine: Engine, fields: Sequence[str]) -> None:
        self._engine = engine
        self._fields = tuple(fields)
        dialect = engine.dialect
        quote = dialect.identifier_preparer.quote
        usage = UsageRecord.__table__
        self._processors: list[tuple[int, Callable[[Any], Any]]] = []
        for i, name in enumerate(self._fields):
            proc = usage.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                self._processors.append((i, proc))
        self._row_sql = "(" + ", ".join("?" for _ in self._fields) + ")"
        self._insert_head = (f"INSERT INTO {quote(usage.name)} ({', '.join(quote(f) for f in self._fields)}) VALUES ")
        self._insert_tail = f" ON CONFLICT ({quote('request_id')}) DO NOTHING RETURNING {quote('request_id')}"
        self._inserts: dict[int, str] = {}
        spend, cost = quote(Spend.__tablename__), quote("cost_nusd")
        self._add_spend = (f"INSERT INTO {spend} ({quote('scope')}, {quote('scope_id')}, {quote('month')}, {cost}) "
                           f"VALUES (?, ?, ?, ?) ON CONFLICT ({quote('scope')}, {quote('scope_id')}, "
                           f"{quote('month')}) DO UPDATE SET {cost} = {spend}.{cost} + excluded.{cost}")
        self._conn: Any = None  # SQLAlchemy's pooled DB-API connection (it ran the engine's PRAGMAs)

    def _insert_sql(self, n: int) -> str:
        sql = self._inserts.get(n)
        if sql is None:
            sql = self._inserts[n] = self._insert_head + ", ".join([self._row_sql] * n) + self._insert_tail
        return sql

    def _params(self, rows: Sequence[Sequence[Any]]) -> list[Any]:
        out: list[Any] = []
        for row in rows:
            values = list(row)
            for i, proc in self._processors:
                if values[i] is not None:
                    values[i] = proc(values[i])
            out.extend(values)
        return out

    def write(self, rows: Sequence[Sequence[Any]],
              spend_for: Callable[[list[str]], dict[tuple[str, int, str], int]]) -> tuple[list[str], dict]:
        """Insert `rows` (values in `fields` order; a request id already there is skipped) and, in the same
        transaction, the spend that `spend_for(inserted ids)` returns. Returns (inserted ids, that spend)."""
        conn = self._conn
        if conn is None:
            conn = self._conn = self._engine.raw_connection()
        raw: sqlite3.Connection = conn.driver_connection
        try:
            raw.execute("BEGIN IMMEDIATE")  # take the write lock now: no deferred upgrade to fail half-way
            inserted: list[str] = []
            for start in range(0, len(rows), _MAX_ROWS_PER_STATEMENT):
                chunk = rows[start:start + _MAX_ROWS_PER_STATEMENT]
                inserted.extend(r[0] for r in raw.execute(self._insert_sql(len(chunk)), self._params(chunk)))
            deltas = spend_for(inserted)
            if deltas:
                raw.executemany(self._add_spend, [(sc, sid, m, amount)
                                                  for (sc, sid, m), amount in sorted(deltas.items())])
            raw.commit()
        except BaseException:
            self._discard()
            raise
        return inserted, deltas

    def _discard(self) -> None:
        """After a failed batch: roll back, and start the next one on a fresh connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.driver_connection.rollback()
            finally:
                conn.invalidate()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
