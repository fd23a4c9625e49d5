"""The usage ledger: one row per request, written exactly once.

Rows go through one writer thread that commits whatever has queued up in a single transaction (group commit),
so the ledger keeps up with hundreds of requests a second on SQLite. The API awaits the commit before it sends
a response's last bytes: a response that reached the client is on disk, and the unique request id makes a
second write of the same request a no-op. The month-to-date spend of the key and the project is updated in
the same transaction, counting only rows that were actually inserted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, fields

from sqlalchemy import select

from qwenhost.gateway.counters import BUCKET_TTL_S
from qwenhost.gateway.db import Database
from qwenhost.gateway.schema import Spend, UsageRecord

log = logging.getLogger("qwenhost.ledger")
MAX_BATCH = 512


@dataclass(frozen=True)
class UsageEntry:
    request_id: str
    created_at: dt.datetime  # when the request arrived (UTC, naive)
    project_id: int
    key_id: int | None
    model: str
    backend: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_nusd: int
    latency_ms: int
    status: str  # completed | disconnected | failed
    # Rate-limit token buckets this request's tokens go to, written with the row when the counters live in the
    # ledger's PostgreSQL (see Gateway.settle); not a column of the ledger.
    counter_adds: tuple[tuple[str, int], ...] = ()


_ROW_FIELDS = tuple(f.name for f in fields(UsageEntry) if f.name != "counter_adds")


def month_of(t: dt.datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}"


def _ignore(_exc: BaseException | None) -> None:
    pass


def _spend_deltas(by_id: dict[str, UsageEntry], inserted: list[str]) -> dict[tuple[str, int, str], int]:
    """What the inserted rows add to the month's spend of their project and key (rows already there add nothing)."""
    deltas: dict[tuple[str, int, str], int] = defaultdict(int)
    for rid in inserted:
        e = by_id[rid]
        if e.cost_nusd == 0:
            continue
        m = month_of(e.created_at)
        deltas[("project", e.project_id, m)] += e.cost_nusd
        if e.key_id is not None:
            deltas[("key", e.key_id, m)] += e.cost_nusd
    return dict(deltas)


SpendListener = Callable[[dict[tuple[str, int, str], int]], None]


class UsageLedger:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue: queue.Queue[tuple[UsageEntry, Callable[[BaseException | None], None]] | None] = queue.Queue()
        self._listeners: list[SpendListener] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.rows_written = 0
        # Built once: constructing these statements (and their cache keys) cost more than executing them for
        # the one-row batches of a lightly loaded server, where each response waits for its batch's commit.
        self._insert_rows = (self.db.insert(UsageRecord).on_conflict_do_nothing(index_elements=["request_id"])
                             .returning(UsageRecord.request_id))
        # PostgreSQL: the batch and its spend in one statement on a connection of the writer's own.
        self._pg = None
        if not db.is_sqlite:  # imported here: psycopg takes 0.1 s to import, which SQLite users need not pay
            from qwenhost.gateway import pg

            self._pg = pg.SyncConnection(pg.conninfo(db.url))
        spend = self.db.insert(Spend)
        self._add_spend = spend.on_conflict_do_update(index_elements=["scope", "scope_id", "month"],
                                                      set_={"cost_nusd": Spend.cost_nusd + spend.excluded.cost_nusd})

    def on_spend(self, listener: SpendListener) -> None:
        """Called (in the writer thread) with {(scope, id, month): nano-USD} after each commit."""
        self._listeners.append(listener)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="qwenhost-ledger", daemon=True)
                    self._thread.start()

    async def record(self, entry: UsageEntry) -> None:
        """Queue a row and wait until it is committed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def done(exc: BaseException | None) -> None:
            def settle() -> None:
                if fut.done():
                    return
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)
            loop.call_soon_threadsafe(settle)

        self._ensure_thread()
        self._queue.put((entry, done))
        await fut

    def enqueue(self, entry: UsageEntry) -> None:
        """Queue a row without waiting for its commit."""
        self._ensure_thread()
        self._queue.put((entry, _ignore))

    def record_sync(self, entry: UsageEntry) -> None:
        done_evt = threading.Event()
        err: list[BaseException] = []

        def done(exc: BaseException | None) -> None:
            if exc is not None:
                err.append(exc)
            done_evt.set()

        self._ensure_thread()
        self._queue.put((entry, done))
        done_evt.wait()
        if err:
            raise err[0]

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None
        if self._pg is not None:
            self._pg.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            try:
                deltas = self.db.retrying(self._write, [e for e, _ in batch])
                exc: BaseException | None = None
            except Exception as e:  # the requests waiting on this batch get the error; the writer goes on
                log.exception("ledger write failed")
                deltas, exc = {}, e
            for _, done in batch:
                done(exc)
            if deltas:
                for listener in self._listeners:
                    try:
                        listener(deltas)
                    except Exception:
                        log.exception("spend listener failed")
            if stop:
                return

    def _write(self, entries: list[UsageEntry]) -> dict[tuple[str, int, str], int]:
        by_id = {e.request_id: e for e in entries}
        # A flat dict per row: dataclasses.asdict deep-copies every value, several times slower.
        rows = [{name: getattr(e, name) for name in _ROW_FIELDS} for e in by_id.values()]
        if self._pg is not None:
            from qwenhost.gateway import pg

            for row, e in zip(rows, by_id.values(), strict=True):
                row["counters"] = dict(e.counter_adds) if e.counter_adds else None
            inserted = [r[0] for r in self._pg.fetch(pg.LEDGER_WRITE, pg.ledger_params(rows, BUCKET_TTL_S))]
            deltas = _spend_deltas(by_id, inserted)
        else:
            with self.db.engine.begin() as sa_conn:
                inserted = sa_conn.execute(self._insert_rows, rows).scalars().all()
                deltas = _spend_deltas(by_id, inserted)
                if deltas:
                    sa_conn.execute(self._add_spend, [
                        {"scope": sc, "scope_id": sid, "month": m, "cost_nusd": amount}
                        for (sc, sid, m), amount in sorted(deltas.items())])
        self.rows_written += len(inserted)
        return deltas

    def spend(self, scope: str, scope_id: int, month: str) -> int:
        return self.db.retrying(self._spend, scope, scope_id, month)

    def _spend(self, scope: str, scope_id: int, month: str) -> int:
        with self.db.session() as s:
            return s.scalar(select(Spend.cost_nusd).where(Spend.scope == scope, Spend.scope_id == scope_id,
                                                          Spend.month == month)) or 0
