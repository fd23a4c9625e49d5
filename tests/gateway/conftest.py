"""Gateway tests run on both databases: a fresh SQLite file, and a fresh schema in the local PostgreSQL
(127.0.0.1:5432, trust auth, database `test`). Set QWENHOST_TEST_PG_URL to use another server."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from sqlalchemy import create_engine, text

from qwenhost.gateway.db import Database
from qwenhost.gateway.service import Gateway
from tests.conftest import ServerProcess

PG_BASE = os.environ.get("QWENHOST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_schema_url() -> Iterator[str]:
    schema = "qh_" + secrets.token_hex(6)
    admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # a machine without the PostgreSQL this project's CI provides
        admin.dispose()
        pytest.fail(f"PostgreSQL at {PG_BASE} is not usable: {exc}")
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
    else:
        yield from _pg_schema_url()


@pytest.fixture()
def gateway(db_url: str):  # type: ignore[no-untyped-def]
    gw = Gateway(Database(db_url))
    yield gw
    gw.close()


REDIS_URL = "redis://127.0.0.1:6379/0"


def _counters(kind: str, gateway):  # type: ignore[no-untyped-def]
    from qwenhost.gateway.counters import MemoryCounters, RedisCounters, database_counters

    if kind == "memory":
        return MemoryCounters()
    if kind == "redis":
        import redis

        try:
            redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
        except Exception as exc:
            pytest.fail(f"Redis at {REDIS_URL} is not usable: {exc}")
        return RedisCounters(REDIS_URL, gateway.db.installation_id())
    return database_counters(gateway.db)


@pytest.fixture(params=["memory", "redis", "database"])
def counters(request: pytest.FixtureRequest, gateway):  # type: ignore[no-untyped-def]
    """Each counter store, on each database (the database store lives in the gateway's own)."""
    return _counters(request.param, gateway)


@pytest.fixture(params=["redis", "database"])
def shared_counters(request: pytest.FixtureRequest, gateway):  # type: ignore[no-untyped-def]
    """The counter stores several processes share (each admission against them is a round trip)."""
    return _counters(request.param, gateway)


# A real server on each database, for the HTTP tests (test_gateway_api.py, test_admin_api.py): one per module.
USER = [{"role": "user", "content": "one two three"}]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """An echo server and a Gateway on the same database, with projects A and B, their keys and an admin."""
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path_factory.mktemp('gw') / 'gw.db'}"])
    else:
        urls = _pg_schema_url()
    url = next(urls)
    gw = Gateway(Database(url))
    a, b = gw.projects.create("alpha"), gw.projects.create("beta")
    keys = {"a": gw.keys.create(a.id).key, "b": gw.keys.create(b.id).key,
            "admin": gw.keys.create(a.id, is_admin=True, name="ops").key}
    gw.prices.set("echo", input_usd="1000", output_usd="1000")  # $0.001 a word, known before the server starts
    srv = ServerProcess([], None, model="echo", env={"QWENHOST_DATABASE_URL": url})
    yield srv, gw, keys
    srv.stop()
    gw.close()
    for _ in urls:  # drop the PostgreSQL schema
        pass


def sdk(srv: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base + "/v1", api_key=key, max_retries=0)
