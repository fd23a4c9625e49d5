"""Admissions that skip the shared counters' round trip (qwenhost/gateway/leases.py): request leases for busy
scopes and a short-lived token view, without ever admitting past a limit."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest

from qwenhost.gateway.counters import MemoryCounters
from qwenhost.gateway.leases import LEASE_MAX, LEASE_TTL_S
from qwenhost.gateway.limits import LimitExceeded, RateLimiter

T0 = 1_800_000_000.0 + 6  # 6 s into a minute
STEP = 0.001  # one admission a millisecond: a busy key


def counting(counters: Any) -> list[tuple[dict, list]]:  # type: ignore[type-arg]
    """Record every call the limiter makes to the store."""
    calls: list[tuple[dict, list]] = []  # type: ignore[type-arg]
    hit = counters.hit

    async def recorded(adds: dict, reads: list) -> Any:  # type: ignore[type-arg]
        calls.append((dict(adds), list(reads)))
        return await hit(adds, reads)

    counters.hit = recorded
    return calls


async def settled(limiter: RateLimiter) -> None:
    """Wait for the unused leases given back in the background."""
    while limiter._tasks:
        await asyncio.gather(*limiter._tasks)


def admissions(calls: list[tuple[dict, list]]) -> int:  # type: ignore[type-arg]
    return sum(1 for _, reads in calls if reads)  # what is given back only adds


def test_a_busy_key_admits_from_leases(gateway, shared_counters) -> None:  # type: ignore[no-untyped-def]
    key = gateway.keys.create(gateway.projects.create("busy-" + secrets.token_hex(3)).id, rpm=100_000)
    p = gateway.keys.authenticate(key.key)
    limiter = RateLimiter(shared_counters)
    calls = counting(shared_counters)
    bucket = f"req:key:{p.key_id}:{int(T0 // 60)}"

    async def run() -> None:
        for i in range(300):
            await limiter.admit(p, now=T0 + i * STEP)
        await settled(limiter)
        assert limiter.views is not None
        left = limiter.views.get("key", p.key_id).lease_left
        assert 0 <= left < LEASE_MAX
        # Every admitted request is counted once; the rest of the bucket is the lease still held.
        assert await shared_counters.get([bucket]) == [300 + left]
        # A lease not used within its time is given back when the next one replaces it.
        await limiter.admit(p, now=T0 + 300 * STEP + LEASE_TTL_S)
        await settled(limiter)
        left = limiter.views.get("key", p.key_id).lease_left
        assert await shared_counters.get([bucket]) == [301 + left]

    asyncio.run(run())
    assert admissions(calls) < 300 / 10  # most of the 300 took no round trip


def test_limits_under_forty_a_minute_never_lease(gateway, shared_counters) -> None:  # type: ignore[no-untyped-def]
    key = gateway.keys.create(gateway.projects.create("small-" + secrets.token_hex(3)).id, rpm=39)
    p = gateway.keys.authenticate(key.key)
    limiter = RateLimiter(shared_counters)
    calls = counting(shared_counters)

    async def run() -> None:
        for i in range(39):
            await limiter.admit(p, now=T0 + i * STEP)
        with pytest.raises(LimitExceeded):
            await limiter.admit(p, now=T0 + 39 * STEP)

    asyncio.run(run())
    assert admissions(calls) == 40 and all(set(adds.values()) <= {1, -1} for adds, _ in calls)


def test_leases_never_admit_past_the_limit_across_processes(gateway, shared_counters) -> None:  # type: ignore[no-untyped-def]
    """Two processes' limiters on one store, taking turns on one key: never more than the limit in all."""
    key = gateway.keys.create(gateway.projects.create("two-" + secrets.token_hex(3)).id, rpm=400)
    p = gateway.keys.authenticate(key.key)
    a, b = RateLimiter(shared_counters), RateLimiter(shared_counters)
    bucket = f"req:key:{p.key_id}:{int(T0 // 60)}"

    async def run() -> None:
        ok = 0
        for i in range(1000):
            try:
                await (a, b)[(i // 7) % 2].admit(p, now=T0 + i * STEP)
                ok += 1
            except LimitExceeded as exc:
                assert "400 requests per minute" in exc.message
        await settled(a)
        await settled(b)
        assert a.views is not None and b.views is not None
        held = a.views.get("key", p.key_id).lease_left + b.views.get("key", p.key_id).lease_left
        assert 400 - held <= ok <= 400  # leases can refuse early by what the other holds, never admit late
        assert held <= 2 * (400 // 20)
        assert await shared_counters.get([bucket]) == [ok + held]

    asyncio.run(run())


def test_the_token_view_answers_while_well_under_the_limit(gateway, shared_counters) -> None:  # type: ignore[no-untyped-def]
    key = gateway.keys.create(gateway.projects.create("tok-" + secrets.token_hex(3)).id, tpm=1000)
    p = gateway.keys.authenticate(key.key)
    limiter = RateLimiter(shared_counters)
    calls = counting(shared_counters)

    async def ended(tokens: int, t: float) -> None:  # what a request's end does: the view, then the store
        limiter.note_tokens(p, tokens, now=t)
        await limiter.add_tokens(p, tokens, now=t)

    async def run() -> None:
        await limiter.admit(p, now=T0)
        await ended(400, T0)
        await limiter.admit(p, now=T0 + 0.01)  # 400 of 1000 by this process's own view: no round trip
        assert admissions(calls) == 1
        await ended(200, T0 + 0.01)
        await limiter.admit(p, now=T0 + 0.02)  # 600: over half, so the store is asked (and says 600)
        assert admissions(calls) == 2
        await ended(400, T0 + 0.02)
        with pytest.raises(LimitExceeded) as ei:  # 1000 by the view alone: refused without a round trip
            await limiter.admit(p, now=T0 + 0.03)
        assert "1000 tokens per minute" in ei.value.message and admissions(calls) == 2
        # Another process's tokens show once the view is older than LEASE_TTL_S.
        other = RateLimiter(shared_counters)
        fresh = gateway.keys.authenticate(gateway.keys.create(p.project_id, tpm=1000).key)
        await other.admit(fresh, now=T0)
        await limiter.admit(fresh, now=T0)  # a view of 0 tokens
        await other.add_tokens(fresh, 450, now=T0)
        await limiter.admit(fresh, now=T0 + 0.01)  # under half by the view, which misses the other's 450
        await other.add_tokens(fresh, 600, now=T0)
        await limiter.admit(fresh, now=T0 + 0.02)  # still the same view (these are the bounded overshoot)
        with pytest.raises(LimitExceeded):
            await limiter.admit(fresh, now=T0 + 0.02 + LEASE_TTL_S)

    asyncio.run(run())


def test_unused_leases_are_given_back_when_idle_and_at_release(gateway, shared_counters) -> None:  # type: ignore[no-untyped-def]
    proj = gateway.projects.create("idle-" + secrets.token_hex(3)).id
    p = gateway.keys.authenticate(gateway.keys.create(proj, rpm=100_000).key)
    limiter = RateLimiter(shared_counters)

    async def bucket_now() -> int:
        return (await shared_counters.get([f"req:key:{p.key_id}:{int(time.time() // 60)}"]))[0]

    async def run() -> None:
        if time.time() % 60 > 55:  # keep the test inside one minute
            await asyncio.sleep(61 - time.time() % 60)
        for _ in range(50):
            await limiter.admit(p)
        assert limiter.views is not None and limiter.views.get("key", p.key_id).lease_left > 0
        await settled(limiter)
        assert await bucket_now() > 50  # the lease, counted ahead
        await asyncio.sleep(LEASE_TTL_S * 2)  # no more requests: a timer gives the quiet key's lease back
        await settled(limiter)
        assert await bucket_now() == 50 and limiter.views.get("key", p.key_id).lease_left == 0
        for _ in range(50):
            await limiter.admit(p)
        await limiter.release()  # what the server does as it stops
        assert await bucket_now() == 100

    asyncio.run(run())


def test_a_refused_request_gives_its_lease_unit_to_the_minute_it_came_from(gateway, shared_counters) -> None:  # type: ignore[no-untyped-def]
    """X takes a unit of a minute-0 lease, then waits on a slow read and is refused; meanwhile Y has fetched a
    minute-1 lease. X's unit goes back to minute 0's bucket, not into minute 1's lease."""
    proj = gateway.projects.create("edge-" + secrets.token_hex(3), tpm=1000)
    p = gateway.keys.authenticate(gateway.keys.create(proj.id, rpm=4000).key)
    limiter = RateLimiter(shared_counters)
    m0 = T0 - T0 % 60
    w0 = int(m0 // 60)
    slow: set[str] = set()
    hit = shared_counters.hit

    async def slow_hit(adds: dict, reads: list) -> Any:  # type: ignore[type-arg]
        task = asyncio.current_task()
        if task is not None and task.get_name() in slow:
            await asyncio.sleep(0.2)
        return await hit(adds, reads)

    shared_counters.hit = slow_hit
    admitted = {w0: 0, w0 + 1: 0}

    async def admit(now: float) -> bool:
        try:
            await limiter.admit(p, now=now)
        except LimitExceeded:
            return False
        admitted[int(now // 60)] += 1
        return True

    async def run() -> None:
        for i in range(100):
            assert await admit(m0 + 59.5 + i * 0.001)
        await shared_counters.hit({f"tok:project:{proj.id}:{w0}": 1000}, [])  # the project's tokens run out
        slow.add("X")
        x = asyncio.create_task(admit(m0 + 59.76), name="X")
        await asyncio.sleep(0.01)
        assert await admit(m0 + 60.05)  # Y, in minute 1 (the project's window has decayed a little)
        assert not await x
        await limiter.release()
        got = await shared_counters.get([f"req:key:{p.key_id}:{w0}", f"req:key:{p.key_id}:{w0 + 1}"])
        assert got == [admitted[w0], admitted[w0 + 1]]

    asyncio.run(run())


def test_own_tokens_stay_in_the_view_when_an_older_read_returns(gateway, shared_counters) -> None:  # type: ignore[no-untyped-def]
    """A request of this process ends while an admission's read is in flight: the read (from before the tokens
    reached the store) must not wipe them from the view, or this one process would pass its limit."""
    p = gateway.keys.authenticate(gateway.keys.create(gateway.projects.create("own").id, tpm=1000).key)
    limiter = RateLimiter(shared_counters)

    async def run() -> None:
        await limiter.admit(p, now=T0)
        x = asyncio.create_task(limiter.admit(p, now=T0 + 0.3))  # the view has expired: X reads the store
        await asyncio.sleep(0)
        limiter.note_tokens(p, 1100, now=T0 + 0.3)  # a request of this process ends with 1,100 tokens
        with pytest.raises(LimitExceeded):
            await x
        await limiter.add_tokens(p, 1100, now=T0 + 0.3)  # they reach the store (after the ledger commit)
        with pytest.raises(LimitExceeded):
            await limiter.admit(p, now=T0 + 0.31)

    asyncio.run(run())


def test_a_cancelled_lease_fetch_does_not_keep_its_counts(gateway, shared_counters) -> None:  # type: ignore[no-untyped-def]
    p = gateway.keys.authenticate(gateway.keys.create(gateway.projects.create("cx").id, rpm=100_000).key)
    limiter = RateLimiter(shared_counters)
    bucket = f"req:key:{p.key_id}:{int(T0 // 60)}"
    hit = shared_counters.hit
    admitted = 0

    async def applied_then_slow(adds: dict, reads: list) -> Any:  # type: ignore[type-arg]
        out = await hit(adds, reads)
        if reads:
            await asyncio.sleep(0.005)  # the reply is on its way back when the client leaves
        return out

    shared_counters.hit = applied_then_slow

    async def run() -> None:
        nonlocal admitted
        for i in range(200):
            task = asyncio.create_task(limiter.admit(p, now=T0 + i * STEP))
            await asyncio.sleep(0.001 if i % 10 == 0 else 0)
            if i % 10 == 0 and not task.done():
                task.cancel()
            try:
                await task
                admitted += 1
            except asyncio.CancelledError:
                pass
        await limiter.release()
        assert await shared_counters.get([bucket]) == [admitted]

    asyncio.run(run())


def test_many_scopes_keep_the_views_that_hold_leases(gateway, shared_counters, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("qwenhost.gateway.leases._MAX_VIEWS", 5)
    proj = gateway.projects.create("many").id
    busy = gateway.keys.authenticate(gateway.keys.create(proj, rpm=100_000).key)
    others = [gateway.keys.authenticate(gateway.keys.create(proj, rpm=10).key) for _ in range(8)]
    limiter = RateLimiter(shared_counters)

    async def run() -> None:
        for i in range(40):
            await limiter.admit(busy, now=T0 + i * STEP)
        assert limiter.views is not None and limiter.views.get("key", busy.key_id).lease_left > 0
        for o in others:  # more scopes than the views may hold: the busy key's lease must survive
            await limiter.admit(o, now=T0 + 0.05)
        await limiter.release()
        assert await shared_counters.get([f"req:key:{busy.key_id}:{int(T0 // 60)}"]) == [40]

    asyncio.run(run())


def test_concurrent_admissions_wait_for_one_lease_fetch(gateway, shared_counters) -> None:  # type: ignore[no-untyped-def]
    """Sixteen clients of one key: an admission finding the scope's next lease on its way waits for it instead of
    fetching another (without that, about one round trip for every six requests here)."""
    p = gateway.keys.authenticate(gateway.keys.create(gateway.projects.create("c16").id, rpm=100_000).key)
    limiter = RateLimiter(shared_counters)
    calls = counting(shared_counters)

    async def client() -> int:
        for _ in range(50):
            await limiter.admit(p)
            await asyncio.sleep(0.0005)  # the rest of a request
        return 50

    async def run() -> int:
        done = sum(await asyncio.gather(*(client() for _ in range(16))))
        await limiter.release()
        return done

    assert asyncio.run(run()) == 800
    assert admissions(calls) <= 800 // 16


def test_a_fetch_left_on_a_stopped_loop_does_not_hold_up_another_loop(gateway) -> None:  # type: ignore[no-untyped-def]
    class StuckOnce(MemoryCounters):
        name = "shared"  # not "memory": the limiter keeps views, as for PostgreSQL or Redis
        calls = 0

        async def hit(self, adds: dict, reads: list) -> Any:  # type: ignore[type-arg]
            StuckOnce.calls += 1
            if StuckOnce.calls == 1:
                await asyncio.sleep(3600)  # the first loop stops while this round trip is in flight
            return await super().hit(adds, reads)

    p = gateway.keys.authenticate(gateway.keys.create(gateway.projects.create("loops").id, rpm=6000).key)
    limiter = RateLimiter(StuckOnce())
    first = asyncio.new_event_loop()
    first.create_task(limiter.admit(p, now=T0))
    first.run_until_complete(asyncio.sleep(0.01))

    async def on_another_loop() -> None:
        await asyncio.wait_for(limiter.admit(p, now=T0 + 0.01), timeout=5)

    t = time.process_time()
    asyncio.run(on_another_loop())
    assert time.process_time() - t < 1  # it fetched its own lease instead of spinning on the stale fetch
