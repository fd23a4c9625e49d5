"""PostgreSQL's ledger writer on the event loop (qwenhost/gateway/ledger.py): rows commit in batches without a
thread hop, and none is lost when a request is cancelled or the loop stops before its batch is written."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import pytest

from qwenhost.gateway.db import Database
from qwenhost.gateway.ledger import UsageEntry, UsageLedger
from tests.gateway.conftest import _pg_schema_url
from tests.gateway.test_exactly_once import ledger as ledger_rows


@pytest.fixture()
def pg_ledger() -> Iterator[UsageLedger]:
    for url in _pg_schema_url():
        db = Database(url)
        db.migrate()
        led = UsageLedger(db)
        yield led
        led.close()
        db.close()


def entry(rid: str, cost: int = 7) -> UsageEntry:
    return UsageEntry(rid, dt.datetime(2026, 11, 24, 12), 1, None, "m", "echo", 3, 0, 4, cost, 1, "completed")


def test_rows_commit_on_the_loop_in_batches(pg_ledger: UsageLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    statements: list[int] = []
    assert pg_ledger._pg_async is not None
    fetch = pg_ledger._pg_async.fetch

    async def counted(sql: str, params: dict) -> list[tuple]:  # type: ignore[type-arg]
        statements.append(params["rows"].count("request_id"))
        return await fetch(sql, params)

    monkeypatch.setattr(pg_ledger._pg_async, "fetch", counted)
    spent: list[dict] = []  # type: ignore[type-arg]
    pg_ledger.on_spend(spent.append)

    async def scenario() -> None:
        await pg_ledger.record(entry("r-first"))
        await asyncio.gather(*(pg_ledger.record(entry(f"r-{i}")) for i in range(40)))
        await pg_ledger.record(entry("r-first"))  # again: no second row, no second spend

    asyncio.run(scenario())
    assert pg_ledger._thread is None  # nothing went through the writer thread
    assert sorted(ledger_rows(pg_ledger.db.url)) == sorted(["r-first", *(f"r-{i}" for i in range(40))])
    assert sum(statements) == 42 and statements[0] == 1 and statements[-1] == 1
    assert len(statements) < 42  # the 40 concurrent rows were grouped
    assert spent and all(k[0] == "project" for d in spent for k in d)  # key_id is None: the project's only
    assert sum(v for d in spent for v in d.values()) == 41 * 7  # told once per inserted row


def test_queued_rows_are_committed_by_drain(pg_ledger: UsageLedger) -> None:
    async def scenario() -> None:
        for i in range(3):
            pg_ledger.enqueue(entry(f"q-{i}"))  # as a cancelled request's clean-up does: no await
        await pg_ledger.drain()
        assert sorted(ledger_rows(pg_ledger.db.url)) == ["q-0", "q-1", "q-2"]

    asyncio.run(scenario())


def test_a_cancelled_request_keeps_its_row(pg_ledger: UsageLedger) -> None:
    async def scenario() -> None:
        waiting = asyncio.create_task(pg_ledger.record(entry("cancelled")))
        await asyncio.sleep(0)  # queued, and its batch is being written
        waiting.cancel()
        await pg_ledger.drain()
        assert waiting.cancelled()

    asyncio.run(scenario())
    assert list(ledger_rows(pg_ledger.db.url)) == ["cancelled"]


@pytest.mark.parametrize("stage", ["queued", "in flight"])
def test_rows_the_loop_did_not_write_are_written_by_close(pg_ledger: UsageLedger, monkeypatch: pytest.MonkeyPatch,
                                                          stage: str) -> None:
    assert pg_ledger._pg_async is not None
    fetch = pg_ledger._pg_async.fetch
    started = asyncio.Event()

    async def stuck(sql: str, params: dict) -> list[tuple]:  # type: ignore[type-arg]
        started.set()
        await asyncio.sleep(60)  # the loop stops first
        return await fetch(sql, params)

    monkeypatch.setattr(pg_ledger._pg_async, "fetch", stuck)

    async def scenario() -> None:
        for i in range(4):
            pg_ledger.enqueue(entry(f"left-{i}"))
        if stage == "in flight":
            await started.wait()

    asyncio.run(scenario())  # cancels the writer's task: queued, or in the middle of its statement
    assert ledger_rows(pg_ledger.db.url) == {}
    pg_ledger.close()
    assert sorted(ledger_rows(pg_ledger.db.url)) == [f"left-{i}" for i in range(4)]
    assert pg_ledger._thread is None  # close() joined the thread that wrote them


def test_a_failed_batch_fails_its_requests_and_the_writer_goes_on(pg_ledger: UsageLedger,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert pg_ledger._pg_async is not None
    fetch = pg_ledger._pg_async.fetch
    calls = 0

    async def fails_once(sql: str, params: dict) -> list[tuple]:  # type: ignore[type-arg]
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database went away")
        return await fetch(sql, params)

    monkeypatch.setattr(pg_ledger._pg_async, "fetch", fails_once)

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="went away"):
            await pg_ledger.record(entry("lost"))
        await pg_ledger.record(entry("kept"))

    asyncio.run(scenario())
    assert list(ledger_rows(pg_ledger.db.url)) == ["kept"]


def test_a_batch_cut_short_goes_back_to_the_queue(pg_ledger: UsageLedger) -> None:
    """The writer's task is cancelled mid-statement (the loop is ending) and a request's clean-up then queues
    another row on the same loop: the first batch must not be forgotten when a second task starts."""
    import psycopg

    from qwenhost.gateway import pg

    blocker = psycopg.connect(pg.conninfo(pg_ledger.db.url))
    blocker.execute("LOCK TABLE usage IN EXCLUSIVE MODE")  # the first statement waits, for real

    async def request_task() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # an await in the clean-up (closing a generator, say)
            pg_ledger.enqueue(entry("second"))  # what Meter.abandoned does
            raise

    async def scenario() -> None:
        pg_ledger.enqueue(entry("first"))
        asyncio.get_running_loop().create_task(request_task())
        await asyncio.sleep(0.3)  # returning ends asyncio.run, which cancels the writer and the request

    try:
        asyncio.run(scenario())
    finally:
        blocker.rollback()
        blocker.close()
    pg_ledger.close()
    assert sorted(ledger_rows(pg_ledger.db.url)) == ["first", "second"]
