"""What one ledger row's commit costs a request on PostgreSQL, paired in one process: through a writer thread
(qwenhost before 2026-11-24, and SQLite's writer today), through the event loop's writer (PostgreSQL's today),
and the bare statement on an async connection (the floor: no queue, no batching).

    .venv/bin/python bench/ledger_commit.py                         # local PostgreSQL, database test
    .venv/bin/python bench/ledger_commit.py --pg-url postgresql+psycopg://user@host/db --rounds 20

Each round runs 150 one-row commits of each kind, one after the other, and keeps the round's median; the
report is the median over rounds (the first is warm-up). Pairing in rounds is what makes the comparison
hold on a shared VM whose speed drifts between runs. A fresh schema is created and dropped. No thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
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


async def rounds(url: str, n_rounds: int, per_round: int) -> dict[str, list[float]]:
    db = Database(url)
    db.migrate()
    on_loop, threaded = UsageLedger(db), UsageLedger(db)
    threaded._pg_async = None  # the writer thread's path, as every ledger took before
    conn = await psycopg.AsyncConnection.connect(pg.conninfo(url), autocommit=True)

    async def bare() -> None:
        rows, _ = on_loop._pg_rows([entry()])
        cur = await conn.execute(pg.LEDGER_WRITE, pg.ledger_params(rows, 60))
        await cur.fetchall()

    kinds: dict[str, Callable[[], Awaitable[None]]] = {
        "writer thread": lambda: threaded.record(entry()),
        "event-loop writer": lambda: on_loop.record(entry()),
        "bare statement": bare,
    }
    out: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        for r in range(n_rounds + 1):
            for name, one in kinds.items():
                times = []
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    await one()
                    times.append(time.perf_counter() - t0)
                if r:
                    out[name].append(statistics.median(times) * 1e3)
    finally:
        await conn.close()
        threaded.close()
        on_loop.close()
        db.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--per-round", type=int, default=150)
    args = ap.parse_args()
    schema = "qh_bench_" + secrets.token_hex(4)
    admin = create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        out = asyncio.run(rounds(f"{args.pg_url}?options=-csearch_path%3D{schema}", args.rounds, args.per_round))
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    floor = statistics.median(out["bare statement"])
    print(f"one-row ledger commit, median of {args.rounds} round medians ({args.per_round} commits each):")
    for name, meds in out.items():
        m = statistics.median(meds)
        print(f"  {name:18s} {m:6.3f} ms  (rounds {min(meds):.3f}–{max(meds):.3f}; "
              f"{m - floor:+.3f} ms over the bare statement)")


if __name__ == "__main__":
    main()
