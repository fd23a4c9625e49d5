"""Would two ledger statements in flight, or spend kept as insert-only deltas, shorten a request's wait for its
commit on PostgreSQL? A synthetic answer, in one process, before changing the ledger's writer.

    .venv/bin/python bench/ledger_pipeline.py                    # 1,000 and 2,000 rows/s, local PostgreSQL
    .venv/bin/python bench/ledger_pipeline.py --rates 500 1500 --seconds 8

Rows arrive at Poisson times from a thread (asyncio's timers fire with 1 ms resolution, which would space
arrivals out and hide any queueing). A writer like qwenhost's loop writer commits whatever has queued in one
statement; up to N statements run at once on N autocommit connections. Each statement inserts its rows and
adds their cost either to one `spend` row per scope (the hot rows every statement of a busy project updates:
qwenhost today) or as insert-only delta rows. Reported: the wait from a row's arrival to its commit, p50 and
p99, and rows per statement. Tables are created in a schema of their own and dropped. No thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import threading
import time
import uuid

import psycopg

SETUP = """
CREATE TABLE usage (request_id text PRIMARY KEY, cost bigint NOT NULL);
CREATE TABLE spend (scope text PRIMARY KEY, cost bigint NOT NULL);
CREATE TABLE spend_delta (id bigserial PRIMARY KEY, scope text NOT NULL, cost bigint NOT NULL);
"""
INSERTED = ("WITH ins AS (INSERT INTO usage SELECT r, 5 FROM unnest(%(ids)s::text[]) r ON CONFLICT DO NOTHING "
            "RETURNING cost) ")
HOT_ROWS = INSERTED + ("INSERT INTO spend SELECT s, sum(cost) FROM ins, unnest(array['project', 'key']) s GROUP BY s "
                       "ON CONFLICT (scope) DO UPDATE SET cost = spend.cost + excluded.cost")
DELTAS = INSERTED + ("INSERT INTO spend_delta (scope, cost) SELECT s, sum(cost) FROM ins, "
                     "unnest(array['project', 'key']) s GROUP BY s")


async def run(dsn: str, rate: float, in_flight: int, sql: str, seconds: float) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, rows per statement) of commit waits at `rate` rows/s."""
    loop = asyncio.get_running_loop()
    conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(in_flight)]
    idle = list(conns)
    pending: list[asyncio.Future[None]] = []
    waits: list[float] = []
    statements = 0

    async def write(conn: psycopg.AsyncConnection) -> None:
        nonlocal pending, statements
        while pending:
            batch, pending = pending, []
            statements += 1
            await conn.execute(sql, {"ids": [uuid.uuid4().hex for _ in batch]})
            for fut in batch:
                fut.set_result(None)
        idle.append(conn)

    async def one() -> None:
        start = time.perf_counter()
        fut: asyncio.Future[None] = loop.create_future()
        pending.append(fut)
        if idle:
            loop.create_task(write(idle.pop()))
        await fut
        waits.append((time.perf_counter() - start) * 1e3)

    tasks: list[asyncio.Task[None]] = []
    finished = asyncio.Event()

    def arrivals() -> None:
        rnd, nxt = random.Random(1), time.perf_counter()
        end = nxt + seconds
        while nxt < end:
            nxt += rnd.expovariate(rate)
            while (left := nxt - time.perf_counter()) > 0:
                time.sleep(left if left > 0.0002 else 0)
            loop.call_soon_threadsafe(lambda: tasks.append(loop.create_task(one())))
        loop.call_soon_threadsafe(finished.set)

    threading.Thread(target=arrivals, daemon=True).start()
    await finished.wait()
    await asyncio.gather(*tasks)
    for c in conns:
        await c.close()
    waits.sort()
    return statistics.median(waits), waits[int(len(waits) * 0.99)], len(waits) / max(1, statements)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default="host=127.0.0.1 user=postgres dbname=test")
    ap.add_argument("--rates", type=float, nargs="+", default=[1000.0, 2000.0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    schema = "ledger_pipeline_" + secrets.token_hex(4)
    dsn = f"{args.dsn} options=-csearch_path={schema}"
    async with await psycopg.AsyncConnection.connect(args.dsn, autocommit=True) as admin:
        await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            await c.execute(SETUP)
        for rate in args.rates:
            for name, sql in (("hot spend rows", HOT_ROWS), ("spend deltas", DELTAS)):
                for n in args.in_flight:
                    p50, p99, per = await run(dsn, rate, n, sql, args.seconds)
                    print(f"{rate:6.0f} rows/s  {name:14}  {n} in flight: commit wait p50 {p50:.3f} ms  "
                          f"p99 {p99:.3f} ms  {per:.2f} rows/statement", flush=True)
    finally:
        async with await psycopg.AsyncConnection.connect(args.dsn, autocommit=True) as admin:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    asyncio.run(main())
