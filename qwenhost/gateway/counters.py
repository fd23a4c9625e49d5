"""Windowed counters for rate limits, in one of three places:

* memory: one qwenhost process (the default with SQLite);
* redis: several processes, when QWENHOST_REDIS_URL is set (atomic INCRBY, keys expire by themselves);
* database: several processes sharing PostgreSQL without Redis (one UPSERT-and-read statement per admission).

Each counter is a per-minute bucket; the rate limiter reads the current and the previous bucket. ``hit`` adds
to some buckets and reads others in one round trip, which is what one admission needs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from typing import Protocol

from qwenhost.gateway.db import Database
from qwenhost.gateway.schema import LimitCounter

BUCKET_TTL_S = 180


class CounterStore(Protocol):
    name: str

    async def add(self, key: str, amount: int) -> int:
        """Add to a bucket and return its new value."""
        ...

    async def get(self, keys: list[str]) -> list[int]: ...

    async def hit(self, adds: dict[str, int], reads: list[str]) -> tuple[dict[str, int], list[int]]:
        """Add to the buckets in ``adds`` and read those in ``reads``: (new values of adds, values of reads)."""
        ...


class MemoryCounters:
    name = "memory"

    def __init__(self) -> None:
        self._values: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._swept = time.monotonic()

    async def add(self, key: str, amount: int) -> int:
        return self.add_now(key, amount)

    def add_now(self, key: str, amount: int) -> int:
        """``add`` without a coroutine: in one process there is nothing to wait for."""
        now = time.monotonic()
        with self._lock:
            value = self._values.get(key, (0, 0.0))[0] + amount
            self._values[key] = (value, now + BUCKET_TTL_S)
            if now - self._swept > 60:
                self._values = {k: v for k, v in self._values.items() if v[1] > now}
                self._swept = now
        return value

    async def get(self, keys: list[str]) -> list[int]:
        return [self._values.get(k, (0, 0.0))[0] for k in keys]

    async def hit(self, adds: dict[str, int], reads: list[str]) -> tuple[dict[str, int], list[int]]:
        values = await self.get(reads)
        return {k: await self.add(k, a) for k, a in adds.items()}, values


class RedisCounters:
    name = "redis"

    def __init__(self, url: str, namespace: str) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.ns = f"qwenhost:{namespace}:"
        self._client = aioredis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    async def add(self, key: str, amount: int) -> int:
        async with self._client.pipeline(transaction=True) as p:
            p.incrby(self.ns + key, amount)
            p.expire(self.ns + key, BUCKET_TTL_S)
            value, _ = await p.execute()
        return int(value)

    async def get(self, keys: list[str]) -> list[int]:
        values = await self._client.mget([self.ns + k for k in keys])
        return [int(v) if v is not None else 0 for v in values]

    async def hit(self, adds: dict[str, int], reads: list[str]) -> tuple[dict[str, int], list[int]]:
        async with self._client.pipeline(transaction=True) as p:
            if reads:
                p.mget([self.ns + k for k in reads])
            for k, a in adds.items():
                p.incrby(self.ns + k, a)
                p.expire(self.ns + k, BUCKET_TTL_S)
            out = await p.execute()
        values = [int(v) if v is not None else 0 for v in out[0]] if reads else []
        incs = out[1:] if reads else out
        return {k: int(incs[2 * i]) for i, k in enumerate(adds)}, values

    async def ping(self) -> None:
        await self._client.ping()


class DatabaseCounters:
    """Counters in a SQLite database (through SQLAlchemy, on a worker thread). PostgreSQL: PostgresCounters."""

    name = "database"

    def __init__(self, db: Database) -> None:
        self.db = db
        self._last_sweep = 0.0
        # Built once, values bound per call: building the statement cost more CPU than running it.
        ins = db.insert(LimitCounter)
        self._upsert = (ins.on_conflict_do_update(index_elements=["key"],
                                                  set_={"value": LimitCounter.value + ins.excluded.value})
                        .returning(LimitCounter.value))

    def _add(self, key: str, amount: int) -> int:
        from sqlalchemy import delete

        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        with self.db.engine.begin() as conn:
            value = conn.execute(self._upsert, {"key": key, "value": amount,
                                                "expires_at": now + dt.timedelta(seconds=BUCKET_TTL_S)}).scalar_one()
            if time.monotonic() - self._last_sweep > 60:
                self._last_sweep = time.monotonic()
                conn.execute(delete(LimitCounter).where(LimitCounter.expires_at < now))
        return int(value)

    def _get(self, keys: list[str]) -> list[int]:
        from sqlalchemy import select

        with self.db.session() as s:
            q = select(LimitCounter.key, LimitCounter.value).where(LimitCounter.key.in_(keys))
            found = dict(s.execute(q).all())
        return [int(found.get(k, 0)) for k in keys]

    async def add(self, key: str, amount: int) -> int:
        return await asyncio.to_thread(self.db.retrying, self._add, key, amount)

    async def get(self, keys: list[str]) -> list[int]:
        return await asyncio.to_thread(self.db.retrying, self._get, keys)

    async def hit(self, adds: dict[str, int], reads: list[str]) -> tuple[dict[str, int], list[int]]:
        values = await self.get(reads) if reads else []
        return {k: await self.add(k, a) for k, a in adds.items()}, values


class PostgresCounters:
    """Counters in PostgreSQL: each admission is one statement on the event loop (see qwenhost.gateway.pg).

    A counter need not survive a database crash (it is a bucket of the last minutes), so its connections do
    not wait for the WAL flush at commit."""

    name = "database"

    def __init__(self, db: Database) -> None:
        from qwenhost.gateway import pg

        self._pg = pg
        self._conns = pg.AsyncConnections(pg.conninfo(db.url), setup=pg.NO_FLUSH_WAIT)
        self._last_sweep = time.monotonic()

    async def hit(self, adds: dict[str, int], reads: list[str]) -> tuple[dict[str, int], list[int]]:
        rows = await self._conns.fetch(self._pg.COUNTERS_HIT, self._pg.counters_params(adds, reads, BUCKET_TTL_S))
        added = {k: int(v) for k, v, was_add in rows if was_add}
        found = {k: int(v) for k, v, was_add in rows if not was_add}
        if time.monotonic() - self._last_sweep > 60:
            self._last_sweep = time.monotonic()
            await self._conns.fetch(self._pg.COUNTERS_SWEEP, {})
        return added, [found.get(k, 0) for k in reads]

    async def add(self, key: str, amount: int) -> int:
        return (await self.hit({key: amount}, []))[0][key]

    async def get(self, keys: list[str]) -> list[int]:
        return (await self.hit({}, keys))[1]


def database_counters(db: Database) -> CounterStore:
    """Counters kept in the gateway's own database, for several processes sharing it without Redis."""
    return DatabaseCounters(db) if db.is_sqlite else PostgresCounters(db)
