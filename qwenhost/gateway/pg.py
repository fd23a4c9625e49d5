"""PostgreSQL's hot paths, on psycopg directly: one round trip per admission and one per ledger batch.

SQLAlchemy stays for everything else. On the request path it cost more than the database did: an ORM session
is a BEGIN, the statement and a ROLLBACK or COMMIT (three or four round trips), plus a hop to a worker thread,
about 1.2 ms a request in all (bench/gateway_overhead.py). Here each statement runs in autocommit mode, so the
statement is its own transaction: counters are an UPSERT and a read in one statement on the event loop, and
the ledger's rows and the spend they add are written by one statement, so both still commit together.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

COUNTERS_POOL = 4  # connections for counters; each admission holds one for a single round trip


def conninfo(sqlalchemy_url: str) -> str:
    """The libpq URI of a SQLAlchemy PostgreSQL URL (query options such as search_path carried over)."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _retryable(exc: BaseException) -> bool:
    # A connection the server closed (restart, idle timeout, pg_terminate_backend): try once on a new one.
    return isinstance(exc, psycopg.OperationalError)


class AsyncConnections:
    """A few autocommit connections for the event loop that made them (connections belong to one loop)."""

    def __init__(self, dsn: str, size: int = COUNTERS_POOL, setup: tuple[str, ...] = ()) -> None:
        self.dsn, self.size, self.setup = dsn, size, setup
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Queue[psycopg.AsyncConnection] | None = None
        self._made = 0

    async def _connect(self) -> psycopg.AsyncConnection:
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        for stmt in self.setup:
            await conn.execute(stmt)
        return conn

    async def _take(self) -> psycopg.AsyncConnection:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new loop (tests run several): the old loop's connections are unusable
            self._loop, self._idle, self._made = loop, asyncio.Queue(), 0
        assert self._idle is not None
        if self._idle.empty() and self._made < self.size:
            self._made += 1
            try:
                return await self._connect()
            except BaseException:
                self._made -= 1
                raise
        return await self._idle.get()

    def _give(self, conn: psycopg.AsyncConnection) -> None:
        if self._idle is not None and asyncio.get_running_loop() is self._loop:
            self._idle.put_nowait(conn)

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        """Run one statement and return its rows, retrying once on a fresh connection if this one was dropped."""
        for attempt in (0, 1):
            conn = await self._take()
            try:
                cur = await conn.execute(sql, params)
                rows = await cur.fetchall() if cur.description else []
            except BaseException as exc:
                self._made -= 1  # this connection is dropped (its state after an error is unknown)
                await _close_quietly(conn)
                if attempt == 0 and _retryable(exc):
                    continue
                raise
            self._give(conn)
            return rows
        raise AssertionError("unreachable")


async def _close_quietly(conn: psycopg.AsyncConnection) -> None:
    try:
        await conn.close()
    except Exception:
        pass


# A commit that returns before the WAL reaches the disk: PostgreSQL still writes it within a few hundred ms
# whatever happens to the client; only a crash of the server or the machine can lose it.
NO_FLUSH_WAIT = ("SET synchronous_commit TO OFF",)


class SyncConnection:
    """One autocommit connection for one thread (the ledger writer), reconnected when dropped."""

    def __init__(self, dsn: str, setup: tuple[str, ...] = ()) -> None:
        self.dsn, self.setup = dsn, setup
        self._conn: psycopg.Connection | None = None

    def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        for attempt in (0, 1):
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.Connection.connect(self.dsn, autocommit=True)
                for stmt in self.setup:
                    self._conn.execute(stmt)
            try:
                cur = self._conn.execute(sql, params)
                return cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                self.close()
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None


# Parameters travel as one JSON text each: psycopg adapts a Python list to an array element by element, in
# Python, which cost twice the CPU of the rest of the call; json.dumps is C and the server unpacks it.

# Counters: add to some buckets and read others, in one statement. The reads see the table as it was before
# the statement, which is what the rate limiter wants (it never reads a bucket it adds to in the same call).
COUNTERS_HIT = """
WITH up AS (
    INSERT INTO limit_counters (key, value, expires_at)
    SELECT key, value::bigint, (now() AT TIME ZONE 'UTC') + make_interval(secs => %(ttl)s)
    FROM json_each_text(%(adds)s::json)
    ON CONFLICT (key) DO UPDATE SET value = limit_counters.value + EXCLUDED.value
    RETURNING key, value)
SELECT key, value, true FROM up
UNION ALL
SELECT key, value, false FROM limit_counters WHERE key IN (SELECT json_array_elements_text(%(reads)s::json))
"""

COUNTERS_SWEEP = "DELETE FROM limit_counters WHERE expires_at < (now() AT TIME ZONE 'UTC')"

# The ledger: insert the batch (a row already there, by request id, is skipped), add what the inserted rows
# cost to the month's spend of their key and project, and add their tokens to the rate limits' token buckets
# (when the counters live in this database: a second round trip per request saved). One statement, one
# transaction, one round trip; spend and counter rows are upserted in key order so that two processes never
# wait on each other's rows in opposite orders.
LEDGER_WRITE = """
WITH batch AS (
    SELECT * FROM json_to_recordset(%(rows)s::json)
    AS b(request_id text, created_at timestamp, project_id int, key_id int, model text, backend text,
         prompt_tokens int, cached_tokens int, completion_tokens int, cost_nusd bigint, latency_ms int,
         status text, counters json)),
ins AS (
    INSERT INTO usage (request_id, created_at, project_id, key_id, model, backend, prompt_tokens, cached_tokens,
                       completion_tokens, cost_nusd, latency_ms, status)
    SELECT request_id, created_at, project_id, key_id, model, backend, prompt_tokens, cached_tokens,
           completion_tokens, cost_nusd, latency_ms, status FROM batch
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id, created_at, project_id, key_id, cost_nusd),
deltas AS (
    SELECT 'project' AS scope, project_id AS scope_id, to_char(created_at, 'YYYY-MM') AS month,
           sum(cost_nusd) AS cost
    FROM ins WHERE cost_nusd <> 0 GROUP BY 1, 2, 3
    UNION ALL
    SELECT 'key', key_id, to_char(created_at, 'YYYY-MM'), sum(cost_nusd)
    FROM ins WHERE cost_nusd <> 0 AND key_id IS NOT NULL GROUP BY 1, 2, 3),
spent AS (
    INSERT INTO spend (scope, scope_id, month, cost_nusd)
    SELECT scope, scope_id, month, cost FROM deltas ORDER BY scope, scope_id, month
    ON CONFLICT (scope, scope_id, month) DO UPDATE SET cost_nusd = spend.cost_nusd + EXCLUDED.cost_nusd),
counted AS (
    INSERT INTO limit_counters (key, value, expires_at)
    SELECT c.key, sum(c.value::bigint), (now() AT TIME ZONE 'UTC') + make_interval(secs => %(ttl)s)
    FROM batch JOIN ins USING (request_id), json_each_text(batch.counters) AS c(key, value)
    GROUP BY c.key ORDER BY c.key
    ON CONFLICT (key) DO UPDATE SET value = limit_counters.value + EXCLUDED.value)
SELECT request_id FROM ins
"""


def _json_default(v: Any) -> str:
    if isinstance(v, dt.datetime):  # naive UTC, as the ledger stores it
        return (v.astimezone(dt.UTC).replace(tzinfo=None) if v.tzinfo else v).isoformat()
    raise TypeError(f"cannot store {type(v).__name__} in the ledger")


def ledger_params(rows: list[dict[str, Any]], ttl: int) -> dict[str, Any]:
    """``rows``: the usage columns, plus ``counters`` ({bucket: tokens} or None) for each row."""
    return {"rows": json.dumps(rows, default=_json_default), "ttl": ttl}


def counters_params(adds: dict[str, int], reads: list[str], ttl: int) -> dict[str, Any]:
    return {"adds": json.dumps(adds), "reads": json.dumps(reads), "ttl": ttl}
