"""What one ledger row's commit costs a request on PostgreSQL, paired in one process: through a writer thread
(qwenhost before 2026-11-24, and SQLite's writer today), through the event loop's writer (PostgreSQL's today),
and the bare statement on an async connection (the floor: no queue, no batching), with and without the wait for
the WAL flush (QWENHOST_LEDGER_SYNC=disk and =process). The client CPU per commit is printed beside the time.

    .venv/bin/python bench/ledger_commit.py                         # local PostgreSQL, database test
    .venv/bin/python bench/ledger_commit.py --pg-url postgresql+psycopg://user@host/db --rounds 20
    .venv/bin/pip install asyncpg && .venv/bin/python bench/ledger_commit.py --asyncpg   # the same statement on asyncpg

asyncpg is not a dependency of qwenhost; --asyncpg times the bare statement on it too, to show what another
driver would save (docs/benchmarks.md).

Each round runs 150 one-row commits of each kind, one after the other, and keeps the round's median; the
report is the median over rounds (the first is warm-up). Pairing in rounds is what makes the comparison
hold on a shared VM whose speed drifts between runs. A fresh schema is created and dropped. No thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import resource
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable

import psycopg
from sqlalchemy import create_engine, text

from qwenhost.gateway import pg
from qwenhost.gateway.db import Database
from qwenhost.gateway.ledger import UsageEntry, UsageLedger


def entry() -> UsageEntry:
    return UsageEntry(request_id=secrets.token_hex(8), created_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
                      project_id=1, key_id=None, model="m", backend="b", prompt_tokens=10, cached_tokens=0,
                      completion_tokens=20, cost_nusd=5, latency_ms=1, status="completed")


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _asyncpg_bare(url: str, schema: str | None, no_flush: bool) -> tuple[Callable[[], Awaitable[None]],
                                                                              Callable[[], Awaitable[None]]]:
    import asyncpg  # optional: not a dependency of qwenhost

    conn = await asyncpg.connect(pg.conninfo(url).split("?", 1)[0],
                                 server_settings={"search_path": schema} if schema else None)
    if no_flush:
        await conn.execute(pg.NO_FLUSH_WAIT[0])
    names = iter(("$1", "$2"))
    stmt = await conn.prepare(re.sub(r"%\((rows|ttl)\)s", lambda _m: next(names), pg.LEDGER_WRITE))

    async def bare() -> None:
        rows, _ = UsageLedger._rows([entry()])
        for r in rows:
            r["counters"] = None
        p = pg.ledger_params(rows, 60)
        await stmt.fetch(p["rows"], p["ttl"])

    return bare, conn.close


async def rounds(url: str, schema: str | None, n_rounds: int, per_round: int,
                 with_asyncpg: bool) -> dict[str, tuple[list[float], list[float]]]:
    db = Database(url)
    db.migrate()
    on_loop, threaded = UsageLedger(db), UsageLedger(db)
    threaded._pg_async = None  # the writer thread's path, as every ledger took before
    conns = [await psycopg.AsyncConnection.connect(pg.conninfo(url), autocommit=True) for _ in range(2)]
    await conns[1].execute(pg.NO_FLUSH_WAIT[0])
    closers = [c.close for c in conns]

    def bare_on(conn: psycopg.AsyncConnection) -> Callable[[], Awaitable[None]]:
        async def bare() -> None:
            rows, _ = on_loop._pg_rows([entry()])
            cur = await conn.execute(pg.LEDGER_WRITE, pg.ledger_params(rows, 60))
            await cur.fetchall()
        return bare

    kinds: dict[str, Callable[[], Awaitable[None]]] = {
        "writer thread": lambda: threaded.record(entry()),
        "event-loop writer": lambda: on_loop.record(entry()),
        "bare statement": bare_on(conns[0]),
        "bare, no flush wait": bare_on(conns[1]),
    }
    if with_asyncpg:
        for label, no_flush in (("asyncpg bare", False), ("asyncpg, no flush", True)):
            kinds[label], close = await _asyncpg_bare(url, schema, no_flush)
            closers.append(close)
    out: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in kinds}
    try:
        for r in range(n_rounds + 1):
            for name, one in kinds.items():
                times = []
                cpu0 = _cpu_s()
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    await one()
                    times.append(time.perf_counter() - t0)
                if r:  # the first round is warm-up
                    out[name][0].append(statistics.median(times) * 1e3)
                    out[name][1].append((_cpu_s() - cpu0) / per_round * 1e3)
    finally:
        for close in closers:
            await close()
        threaded.close()
        on_loop.close()
        db.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--per-round", type=int, default=150)
    ap.add_argument("--asyncpg", action="store_true", help="also time the bare statement on asyncpg (pip install it)")
    args = ap.parse_args()
    schema = "qh_bench_" + secrets.token_hex(4)
    admin = create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        out = asyncio.run(rounds(f"{args.pg_url}?options=-csearch_path%3D{schema}", schema, args.rounds,
                                 args.per_round, args.asyncpg))
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    floor = statistics.median(out["bare statement"][0])
    print(f"one-row ledger commit, median of {args.rounds} round medians ({args.per_round} commits each):")
    for name, (meds, cpu) in out.items():
        m = statistics.median(meds)
        print(f"  {name:20s} {m:6.3f} ms  (rounds {min(meds):.3f}–{max(meds):.3f}; "
              f"{m - floor:+.3f} ms over the bare statement; client CPU {statistics.median(cpu):.3f} ms)")


if __name__ == "__main__":
    main()
