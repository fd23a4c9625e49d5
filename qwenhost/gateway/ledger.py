"""The usage ledger: one row per request, written exactly once.

Rows are written in batches: whatever has queued up while the previous batch was committing goes in one
transaction (group commit), so the ledger keeps up with thousands of requests a second. On SQLite a writer
thread does it; on PostgreSQL a task on the server's event loop does, on an async connection of its own (the hop
to a thread and back cost about 0.2 ms of a request's latency, as much as the WAL flush). The API awaits the
commit before it sends a response's last bytes: a response that reached the client is on disk, and the unique
request id makes a second write of the same request a no-op. The month-to-date spend of the key and the project
is updated in the same transaction, counting only rows that were actually inserted.
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
from qwenhost.gateway.schema import Spend
from qwenhost.gateway.sqlite_ledger import SqliteLedgerWriter

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


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():  # the request was cancelled meanwhile; its row is committed all the same
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


class _LoopWriter:
    """The PostgreSQL ledger writer of one event loop: rows queue here and one task commits them in batches."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[tuple[UsageEntry, asyncio.Future[None] | None]] = []
        # The batch being committed. A cancelled task puts it back in pending; if the loop instead stops with the
        # task suspended (never resumed), close() writes it again through the thread, and the request id makes
        # that a no-op if it had committed.
        self.inflight: list[UsageEntry] = []
        self.task: asyncio.Task[None] | None = None

    def unwritten(self) -> list[UsageEntry]:
        return self.inflight + [e for e, _ in self.pending]


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
        # PostgreSQL: the batch and its spend in one statement on a connection of the writer's own. SQLite: the
        # writer thread's own sqlite3 connection, without SQLAlchemy's per-statement work.
        self._pg = self._pg_async = None
        self._sqlite: SqliteLedgerWriter | None = None
        self._loop_writer: _LoopWriter | None = None
        if db.is_sqlite:
            self._sqlite = SqliteLedgerWriter(db.engine, _ROW_FIELDS)
        else:  # imported here: psycopg takes 0.1 s to import, which SQLite users need not pay
            from qwenhost.gateway import pg

            setup = pg.NO_FLUSH_WAIT if db.ledger_sync == "process" else ()
            self._pg = pg.SyncConnection(pg.conninfo(db.url), setup)  # for callers outside an event loop
            self._pg_async = pg.AsyncConnections(pg.conninfo(db.url), size=1, setup=setup)

    def on_spend(self, listener: SpendListener) -> None:
        """Called with {(scope, id, month): nano-USD} after each commit: in the writer thread, or on the event
        loop for rows that PostgreSQL's loop writer committed."""
        self._listeners.append(listener)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="qwenhost-ledger", daemon=True)
                    self._thread.start()

    def _writer_of(self, loop: asyncio.AbstractEventLoop) -> _LoopWriter:
        w = self._loop_writer
        if w is None or w.loop is not loop:
            if w is not None:  # an earlier loop's rows (tests run several loops): the thread writes them
                for e in w.unwritten():
                    self._queue_for_thread(e, _ignore)
            w = self._loop_writer = _LoopWriter(loop)
        return w

    def _on_loop(self, entry: UsageEntry, fut: asyncio.Future[None] | None) -> None:
        w = self._writer_of(asyncio.get_running_loop())
        w.pending.append((entry, fut))
        if w.task is None:
            w.task = w.loop.create_task(self._drain(w))

    async def _drain(self, w: _LoopWriter) -> None:
        from qwenhost.gateway import pg

        assert self._pg_async is not None
        try:
            while w.pending:
                batch, w.pending = w.pending[:MAX_BATCH], w.pending[MAX_BATCH:]
                w.inflight = [e for e, _ in batch]
                try:
                    rows, by_id = self._pg_rows(w.inflight)
                    done = await self._pg_async.fetch(pg.LEDGER_WRITE, pg.ledger_params(rows, BUCKET_TTL_S))
                    deltas, exc = self._inserted(by_id, [r[0] for r in done]), None
                except Exception as e:  # the requests waiting on this batch get the error; the writer goes on
                    log.exception("ledger write failed")
                    deltas, exc = {}, e
                except BaseException:  # cancelled mid-statement: the batch goes back to the front of the queue,
                    # for the next task on this loop or for close() (a row that did commit is then a no-op)
                    w.inflight = []
                    w.pending[:0] = batch
                    raise
                w.inflight = []
                for _, fut in batch:
                    if fut is not None:
                        _settle(fut, exc)
                self._tell(deltas)
        finally:
            w.task = None

    async def drain(self) -> None:
        """Wait until every row queued on this event loop is committed (before the loop stops)."""
        w = self._loop_writer
        while w is not None and w.loop is asyncio.get_running_loop() and w.task is not None:
            await asyncio.shield(w.task)

    async def record(self, entry: UsageEntry) -> None:
        """Queue a row and wait until it is committed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self._pg_async is not None:
            self._on_loop(entry, fut)
            await fut
            return

        def done(exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, fut, exc)

        self._queue_for_thread(entry, done)
        await fut

    def _queue_for_thread(self, entry: UsageEntry, done: Callable[[BaseException | None], None]) -> None:
        self._ensure_thread()
        self._queue.put((entry, done))

    def enqueue(self, entry: UsageEntry) -> None:
        """Queue a row without waiting for its commit."""
        if self._pg_async is not None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                self._on_loop(entry, None)
                return
        self._queue_for_thread(entry, _ignore)

    def record_sync(self, entry: UsageEntry) -> None:
        done_evt = threading.Event()
        err: list[BaseException] = []

        def done(exc: BaseException | None) -> None:
            if exc is not None:
                err.append(exc)
            done_evt.set()

        self._queue_for_thread(entry, done)
        done_evt.wait()
        if err:
            raise err[0]

    def close(self) -> None:
        w, self._loop_writer = self._loop_writer, None
        if w is not None:  # rows an event loop did not get to commit (it stopped first): the thread writes them
            for e in w.unwritten():
                self._queue_for_thread(e, _ignore)
        still_writing = False
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            still_writing, self._thread = self._thread.is_alive(), None
        if self._pg is not None:
            self._pg.close()
        if self._sqlite is not None and not still_writing:  # a thread stuck in a write keeps its connection
            self._sqlite.close()

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
            self._tell(deltas)
            if stop:
                return

    def _tell(self, deltas: dict[tuple[str, int, str], int]) -> None:
        if deltas:
            for listener in self._listeners:
                try:
                    listener(deltas)
                except Exception:
                    log.exception("spend listener failed")

    @staticmethod
    def _rows(entries: list[UsageEntry]) -> tuple[list[dict], dict[str, UsageEntry]]:
        by_id = {e.request_id: e for e in entries}
        # A flat dict per row: dataclasses.asdict deep-copies every value, several times slower.
        return [{name: getattr(e, name) for name in _ROW_FIELDS} for e in by_id.values()], by_id

    def _pg_rows(self, entries: list[UsageEntry]) -> tuple[list[dict], dict[str, UsageEntry]]:
        rows, by_id = self._rows(entries)
        for row, e in zip(rows, by_id.values(), strict=True):
            row["counters"] = dict(e.counter_adds) if e.counter_adds else None
        return rows, by_id

    def _inserted(self, by_id: dict[str, UsageEntry], inserted: list[str]) -> dict[tuple[str, int, str], int]:
        self.rows_written += len(inserted)
        return _spend_deltas(by_id, inserted)

    def _write(self, entries: list[UsageEntry]) -> dict[tuple[str, int, str], int]:
        if self._pg is not None:
            from qwenhost.gateway import pg

            rows, by_id = self._pg_rows(entries)
            return self._inserted(by_id, [r[0] for r in self._pg.fetch(pg.LEDGER_WRITE,
                                                                        pg.ledger_params(rows, BUCKET_TTL_S))])
        assert self._sqlite is not None
        by_id = {e.request_id: e for e in entries}
        inserted, deltas = self._sqlite.write([tuple(getattr(e, name) for name in _ROW_FIELDS)
                                               for e in by_id.values()], lambda ids: _spend_deltas(by_id, ids))
        self.rows_written += len(inserted)
        return deltas

    def spend(self, scope: str, scope_id: int, month: str) -> int:
        return self.db.retrying(self._spend, scope, scope_id, month)

    def _spend(self, scope: str, scope_id: int, month: str) -> int:
        with self.db.session() as s:
            return s.scalar(select(Spend.cost_nusd).where(Spend.scope == scope, Spend.scope_id == scope_id,
                                                          Spend.month == month)) or 0
