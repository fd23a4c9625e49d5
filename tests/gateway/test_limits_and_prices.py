"""Prices, costs, the sliding-window arithmetic, counters on every store, budgets and the ledger's exactness."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time

import pytest
from sqlalchemy import select, text

from qwenhost.gateway.counters import MemoryCounters, database_counters
from qwenhost.gateway.keys import AuthError
from qwenhost.gateway.ledger import UsageEntry, month_of
from qwenhost.gateway.limits import LimitExceeded, RateLimiter, seconds_until_room, window_estimate
from qwenhost.gateway.prices import (
    PriceTier,
    cost_nusd,
    micro_to_usd,
    nano_to_usd,
    plain_decimal,
    usd_per_million,
    usd_to_micro,
)
from qwenhost.gateway.schema import ApiKey
from qwenhost.gateway.usage import UsageRow


def entry(gw, principal, rid: str, prompt: int = 1000, completion: int = 100, cached: int = 0,  # type: ignore[no-untyped-def]
          model: str = "qwen3-max", when: dt.datetime | None = None) -> UsageEntry:
    when = when or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return UsageEntry(rid, when, principal.project_id, principal.key_id, model, "local", prompt, cached,
                      completion, gw.prices.cost(model, prompt, cached, completion), 5, "completed")


def test_money_is_exact() -> None:
    assert usd_to_micro("1.2") == 1_200_000
    assert usd_to_micro(0.1) == 100_000
    for bad in ("-1", "abc", "nan", "inf"):
        with pytest.raises(ValueError):
            usd_to_micro(bad)
    tier = PriceTier(None, usd_to_micro("1.2"), usd_to_micro("0.24"), usd_to_micro("6"))
    # 1000 uncached prompt at $1.2/M + 100 output at $6/M = $0.0012 + $0.0006 = 1,800,000 nano-USD
    assert cost_nusd(tier, 1000, 0, 100) == 1_800_000
    # 400 of the 1000 prompt tokens cached at $0.24/M: 600*1.2 + 400*0.24 + 100*6 = 720+96+600 micro-cents...
    assert cost_nusd(tier, 1000, 400, 100) == 720_000 + 96_000 + 600_000
    assert usd_per_million(usd_to_micro("1.80"), 20.0) == pytest.approx(25.0, rel=1e-6)  # $1.80/h at 20 tok/s


def test_tiered_prices_follow_prompt_length(gateway) -> None:  # type: ignore[no-untyped-def]
    # Qwen3-Max's tiers: <=32K $1.2/$6, 32K-128K $2.4/$12, 128K-252K $3/$15 per M input/output.
    gateway.prices.set("qwen3-max", input_usd="1.2", output_usd="6", up_to_tokens=32_768)
    gateway.prices.set("qwen3-max", input_usd="2.4", output_usd="12", up_to_tokens=131_072)
    gateway.prices.set("qwen3-max", input_usd="3", output_usd="15", up_to_tokens=258_048)
    assert gateway.prices.cost("qwen3-max", 32_768, 0, 1000) == 32_768 * 1_200_000 // 1000 + 6_000_000
    assert gateway.prices.cost("qwen3-max", 32_769, 0, 0) == (32_769 * 2_400_000 + 500) // 1000
    assert gateway.prices.cost("qwen3-max", 200_000, 0, 1_000_000) == 200_000 * 3000 + 15_000_000_000
    assert gateway.prices.cost("unpriced-model", 10, 0, 10) == 0
    gateway.prices.set("qwen3-max", input_usd="1.0", output_usd="5", up_to_tokens=32_768)  # update, not a new tier
    assert len(gateway.prices.all()["qwen3-max"]) == 3
    assert gateway.prices.cost("qwen3-max", 1000, 0, 0) == 1_000_000


@pytest.mark.parametrize(("prev", "curr", "limit", "frac", "expect"), [
    (0, 10, 10, 0.5, 36),    # this minute is full: 30 s to its end, then 6 s until its weight lets one more in
    (10, 0, 10, 0.0, 6),     # previous minute full, decaying: room for 1 after 1/10 of a minute
    (10, 5, 10, 0.5, 6),     # 10*0.5 + 5 = 10: room once the previous minute's weight drops by 0.1 (6 s)
])
def test_retry_after_is_when_the_window_has_room(prev: int, curr: int, limit: int, frac: float, expect: int) -> None:
    got = seconds_until_room(prev, curr, limit, 1, frac)
    assert got == expect
    # At the moment it names, one more request fits.
    later = frac + got / 60
    if later < 1:
        assert window_estimate(prev, curr, later) + 1 <= limit + 1e-9
    else:
        assert window_estimate(curr, 0, later - 1) + 1 <= limit + 1e-9


def test_rate_limits_on_every_counter_store(gateway, counters) -> None:  # type: ignore[no-untyped-def]
    proj = gateway.projects.create("p-" + secrets.token_hex(3), rpm=5)
    key = gateway.keys.create(proj.id, rpm=3, tpm=1000)
    p = gateway.keys.authenticate(key.key)
    limiter = RateLimiter(counters)
    t0 = 1_800_000_000.0 + 6  # 6 s into a minute

    async def run() -> None:
        for _ in range(3):
            await limiter.admit(p, now=t0)
        with pytest.raises(LimitExceeded) as ei:
            await limiter.admit(p, now=t0)
        assert ei.value.code == "rate_limit_exceeded" and "3 requests per minute" in ei.value.message
        # 3 at 6 s into a minute: 54 s to the minute's end, then 20 s until its weight is 2/3.
        assert ei.value.retry_after == 74
        # A refused request does not eat the budget: after the window moves on, 3 fit again.
        for _ in range(3):
            await limiter.admit(p, now=t0 + 120)
        # Tokens: the limit stops requests once the minute's tokens are spent.
        await limiter.add_tokens(p, 1000, now=t0 + 240)
        with pytest.raises(LimitExceeded) as ei:
            await limiter.admit(p, now=t0 + 240)
        assert "1000 tokens per minute" in ei.value.message

    asyncio.run(run())


def test_one_hit_adds_and_reads_in_one_call(counters) -> None:  # type: ignore[no-untyped-def]
    """What an admission relies on: adds return the new values, reads return what was there before."""
    tag = secrets.token_hex(4)
    a, b, c = f"t:{tag}:a", f"t:{tag}:b", f"t:{tag}:c"

    async def run() -> None:
        assert await counters.hit({a: 2, b: 5}, [c]) == ({a: 2, b: 5}, [0])
        assert await counters.hit({c: 7}, [a, b, f"t:{tag}:none"]) == ({c: 7}, [2, 5, 0])
        assert await counters.hit({a: -1}, []) == ({a: 1}, [])
        assert await counters.hit({}, [a, c]) == ({}, [1, 7])
        assert await counters.get([b]) == [5] and await counters.add(b, 1) == 6

    asyncio.run(run())


def test_a_refusal_by_the_project_takes_back_the_keys_count(gateway, counters) -> None:  # type: ignore[no-untyped-def]
    proj = gateway.projects.create("p-" + secrets.token_hex(3), rpm=2)
    a = gateway.keys.authenticate(gateway.keys.create(proj.id, rpm=2).key)
    b = gateway.keys.authenticate(gateway.keys.create(proj.id).key)
    limiter = RateLimiter(counters)
    t = 1_800_000_000.0 + 6

    async def run() -> None:
        await limiter.admit(b, now=t)
        await limiter.admit(b, now=t)
        for _ in range(3):  # the project is full: each refusal must not count against key a's own limit
            with pytest.raises(LimitExceeded) as ei:
                await limiter.admit(a, now=t)
            assert "project" in ei.value.message
        win = int(t // 60)
        assert await counters.get([f"req:key:{a.key_id}:{win}", f"req:project:{proj.id}:{win}"]) == [0, 2]

    asyncio.run(run())


def test_project_limit_counts_all_its_keys(gateway) -> None:  # type: ignore[no-untyped-def]
    proj = gateway.projects.create("shared", rpm=4)
    a = gateway.keys.authenticate(gateway.keys.create(proj.id).key)
    b = gateway.keys.authenticate(gateway.keys.create(proj.id).key)
    limiter = RateLimiter(MemoryCounters())
    t = 1_800_000_030.0

    async def run() -> None:
        for p in (a, b, a, b):
            await limiter.admit(p, now=t)
        with pytest.raises(LimitExceeded) as ei:
            await limiter.admit(a, now=t)
        assert "project 'shared'" in ei.value.message

    asyncio.run(run())


def test_ledger_is_exactly_once_and_keeps_spend(gateway) -> None:  # type: ignore[no-untyped-def]
    gateway.prices.set("qwen3-max", input_usd="1.2", output_usd="6")
    proj = gateway.projects.create("billing")
    p = gateway.keys.authenticate(gateway.keys.create(proj.id).key)
    e = entry(gateway, p, "chatcmpl-one")
    gateway.ledger.record_sync(e)
    gateway.ledger.record_sync(e)  # the same request again (e.g. a retry after a crash): not a second row
    gateway.ledger.record_sync(entry(gateway, p, "chatcmpl-two", prompt=2000, completion=0))
    month = month_of(dt.datetime.now(dt.UTC))
    assert gateway.ledger.spend("key", p.key_id, month) == 1_800_000 + 2_400_000
    assert gateway.ledger.spend("project", p.project_id, month) == 1_800_000 + 2_400_000
    with gateway.db.session() as s:
        assert s.scalar(text("SELECT count(*) FROM usage")) == 2


def test_budget_is_a_hard_stop_before_generation(gateway) -> None:  # type: ignore[no-untyped-def]
    gateway.prices.set("qwen3-max", input_usd="1.2", output_usd="6")
    proj = gateway.projects.create("capped", budget_nusd=3_000_000)  # $0.003 a month
    p = gateway.keys.authenticate(gateway.keys.create(proj.id).key)

    async def run() -> None:
        await gateway.admit(p)
        gateway.ledger.record_sync(entry(gateway, p, "r1"))  # $0.0018
        await gateway.admit(p)
        gateway.ledger.record_sync(entry(gateway, p, "r2"))  # $0.0036 in all: over
        with pytest.raises(LimitExceeded) as ei:
            await gateway.admit(p)
        assert ei.value.code == "insufficient_quota" and "$0.0036" in ei.value.message
        # Last month's spend does not count against this month.
        old = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=40)
        p2 = gateway.keys.authenticate(gateway.keys.create(gateway.projects.create("fresh", budget_nusd=10).id).key)
        gateway.ledger.record_sync(entry(gateway, p2, "old", when=old))
        await gateway.admit(p2)

    asyncio.run(run())


def test_keys_are_stored_hashed_and_revocable(gateway) -> None:  # type: ignore[no-untyped-def]
    proj = gateway.projects.create("keys")
    created = gateway.keys.create(proj.id, name="ci")
    prefix, secret = created.key.split("_", 1)
    with gateway.db.session() as s:
        row = s.scalar(select(ApiKey))
        stored = " ".join(str(v) for v in (row.prefix, row.salt, row.secret_hash, row.name))
    assert secret not in stored and row.prefix == prefix
    assert gateway.keys.authenticate(created.key).project_name == "keys"
    for wrong in (prefix + "_" + "x" * len(secret), "qh-00000000_abc", "sk-something", ""):
        with pytest.raises(AuthError) as ei:
            gateway.keys.authenticate(wrong)
        assert ei.value.code == "invalid_api_key"
    gateway.keys.revoke(prefix)
    with pytest.raises(AuthError) as ei:
        gateway.keys.authenticate(created.key)
    assert ei.value.code == "revoked_api_key"
    past = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=1)
    expired = gateway.keys.create(proj.id, expires_at=past)
    with pytest.raises(AuthError) as ei:
        gateway.keys.authenticate(expired.key)
    assert ei.value.code == "expired_api_key" and "expired" in ei.value.message


def test_a_connection_the_database_dropped_is_retried() -> None:
    """PostgreSQL restarts or kills idle connections: the next ledger write, key lookup and counter update
    reconnect instead of failing the request (there is no pre-ping round trip to catch it earlier)."""
    from sqlalchemy import create_engine

    from qwenhost.gateway.db import Database
    from qwenhost.gateway.service import Gateway
    from tests.gateway.conftest import PG_BASE, _pg_schema_url

    urls = _pg_schema_url()
    url = next(urls)
    app_name = "qh_retry_" + secrets.token_hex(3)
    gw = Gateway(Database(f"{url}&application_name={app_name}"))
    try:
        key = gw.keys.create(gw.projects.create("retry").id, rpm=100)
        p = gw.keys.authenticate(key.key)
        gw.ledger.record_sync(entry(gw, p, "before"))
        counters = database_counters(gw.db)

        def kill_backends() -> int:
            killer = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
            with killer.connect() as c:
                killed = c.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                        "WHERE application_name = :a"), {"a": app_name}).scalar()
            killer.dispose()
            return int(killed)

        async def run() -> None:  # one event loop, so the counters' own connection is the one killed
            assert await counters.add("k", 1) == 1
            assert kill_backends() >= 2  # the pool's, the ledger writer's and the counters' connections
            gw.ledger.record_sync(entry(gw, p, "after"))
            gw.keys._cache.clear()
            assert gw.keys.authenticate(key.key).project_name == "retry"
            assert await counters.add("k", 1) == 2

        asyncio.run(run())
        with gw.db.session() as s:
            assert s.scalar(text("SELECT count(*) FROM usage")) == 2
    finally:
        gw.close()
        for _ in urls:
            pass


def test_a_finished_requests_tokens_count_before_the_next_admission(gateway) -> None:  # type: ignore[no-untyped-def]
    """Through the gateway: counters in memory (SQLite's default) count at once, in PostgreSQL with the row."""
    p = gateway.keys.authenticate(gateway.keys.create(gateway.projects.create("tok").id, tpm=20).key)

    async def run() -> None:
        if time.time() % 60 > 55:  # inside one minute: across one, the window's decay lets a request through
            await asyncio.sleep(61 - time.time() % 60)
        await gateway.admit(p)
        await gateway.settle(p, gateway.start("chatcmpl-t1", "echo", "echo"), prompt_tokens=10, cached_tokens=0,
                             completion_tokens=5, status="completed")
        await gateway.admit(p)  # 15 of 20
        await gateway.settle(p, gateway.start("chatcmpl-t2", "echo", "echo"), prompt_tokens=4, cached_tokens=0,
                             completion_tokens=1, status="completed")
        with pytest.raises(LimitExceeded) as ei:  # 20 of 20
            await gateway.admit(p)
        assert "20 tokens per minute" in ei.value.message

    asyncio.run(run())


@pytest.mark.parametrize(("amount", "text_"), [
    (nano_to_usd(10), "0.00000001"), (nano_to_usd(100_000_000_000), "100"), (micro_to_usd(10_000_000), "10"),
    (micro_to_usd(1_200_000), "1.2"), (nano_to_usd(0), "0"), (nano_to_usd(2_500_000), "0.0025"),
])
def test_amounts_are_written_without_exponents(amount, text_) -> None:  # type: ignore[no-untyped-def]
    assert plain_decimal(amount) == text_
    assert UsageRow("m", 1, 1, 0, 1, amount).as_dict()["cost_usd"] == text_
