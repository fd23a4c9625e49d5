"""Rate limits (requests and tokens per minute, per key and per project); monthly budgets are in budgets.py.

Rates use a sliding window over per-minute buckets: the previous minute's count, weighted by how much of it
still lies inside the last 60 s, plus the current minute's. A request counts when it is admitted; its tokens
count when it ends (they are not known before), so a tokens-per-minute limit stops the requests that come
after the minute's tokens are spent. With counters shared by several processes, a busy key or project counts a
few requests ahead and admits them without a round trip, and a short-lived view of the token buckets answers
while far from the limit (qwenhost/gateway/leases.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from qwenhost.gateway.counters import CounterStore, MemoryCounters
from qwenhost.gateway.keys import Principal
from qwenhost.gateway.leases import LEASE_TTL_S, TOKENS_LOCAL_BELOW, ScopeView, Taken, Views

log = logging.getLogger("qwenhost.limits")
WINDOW_S = 60


class LimitExceeded(Exception):
    def __init__(self, message: str, code: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.retry_after = message, code, retry_after


def window_estimate(prev: int, curr: int, frac: float) -> float:
    return prev * (1.0 - frac) + curr


def seconds_until_room(prev: int, curr: int, limit: int, cost: int, frac: float) -> int:
    """Seconds until prev*(1-f) + curr + cost <= limit, with f the fraction of the current minute gone."""
    if cost > limit:
        return WINDOW_S
    if curr + cost <= limit and prev > 0:
        # Within this minute, as the previous minute's weight decays.
        f_needed = 1.0 - (limit - cost - curr) / prev
        return max(1, math.ceil((f_needed - frac) * WINDOW_S))
    # Next minute: the current bucket becomes the previous one and decays in turn.
    rest = (1.0 - frac) * WINDOW_S
    q = 0.0 if curr == 0 else max(0.0, 1.0 - (limit - cost) / curr)
    return max(1, math.ceil(rest + q * WINDOW_S))


@dataclass(frozen=True)
class _Scope:
    kind: str  # key | project
    ident: int
    rpm: int | None
    tpm: int | None


def _scopes(p: Principal) -> list[_Scope]:
    out = []
    if p.key_id is not None and (p.rpm or p.tpm):
        out.append(_Scope("key", p.key_id, p.rpm, p.tpm))
    if p.project_rpm or p.project_tpm:
        out.append(_Scope("project", p.project_id, p.project_rpm, p.project_tpm))
    return out


class RateLimiter:
    def __init__(self, counters: CounterStore) -> None:
        self.counters = counters
        # Shared counters cost a round trip an admission can often skip (qwenhost/gateway/leases.py).
        self.views: Views | None = None if counters.name == "memory" else Views()
        self._tasks: set[asyncio.Task] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_loop: asyncio.AbstractEventLoop | None = None

    async def admit(self, p: Principal, now: float | None = None) -> None:
        scopes = _scopes(p)
        if not scopes:
            return
        now = time.time() if now is None else now
        win, frac = int(now // WINDOW_S), (now % WINDOW_S) / WINDOW_S
        # Whatever the views cannot answer, read and counted in one round trip to the counter store: the
        # request is counted first and taken back if it is refused (rare), rather than read, checked, counted.
        while True:
            reads, adds, leased, in_flight = self._plan(p, scopes, win, frac, now)
            if in_flight is None:
                break
            # Another admission is fetching this scope's next lease: wait for it rather than fetch one more
            # (sixteen clients made three round trips for every ten requests without this, one with it).
            in_flight.waiting += 1
            try:
                await asyncio.shield(in_flight.refreshing)  # type: ignore[arg-type]
            except Exception:  # that admission's error is its own; this one tries for itself
                pass
            finally:
                in_flight.waiting -= 1
        if not reads and not adds:
            for t in leased:
                t.view.taken += 1
            return
        if self.views is None:  # counters in this process: no round trip to share, none to cut short
            added, read_values = await self.counters.hit(adds, reads)
        else:
            added, read_values = await self._trip(adds, reads, leased, [
                self.views.get(sc.kind, sc.ident) for sc in scopes if f"req:{sc.kind}:{sc.ident}:{win}" in adds])
        values = dict(zip(reads, read_values, strict=True))
        refusal: LimitExceeded | None = None
        for sc in scopes:
            prev_key = f"tok:{sc.kind}:{sc.ident}:{win - 1}"
            if not sc.tpm or prev_key not in values:
                continue
            prev, curr = values[prev_key], values[f"tok:{sc.kind}:{sc.ident}:{win}"]
            if self.views is not None:
                v = self.views.get(sc.kind, sc.ident)
                if v.tok_win == win:  # both are lower bounds: the view may hold own tokens not yet in the store
                    prev, curr = max(prev, v.tok_prev), max(curr, v.tok_curr)
                v.tok_win, v.tok_prev, v.tok_curr, v.tok_at = win, prev, curr, now
            if window_estimate(prev, curr, frac) >= sc.tpm:
                refusal = self._over_tokens(p, sc, prev, curr, frac)
                break
        granted: dict[str, int] = {}
        for sc in scopes if refusal is None else ():
            key = f"req:{sc.kind}:{sc.ident}:{win}"
            if key not in adds:
                continue
            counted, curr, prev = adds[key], added[key], values[f"req:{sc.kind}:{sc.ident}:{win - 1}"]
            # How many of the requests just counted fit: this one, and those the lease keeps for later.
            fit = min(counted, math.floor(sc.rpm - window_estimate(prev, curr - counted, frac) + 1e-9))
            if fit < 1:
                refusal = LimitExceeded(
                    f"Rate limit reached for {sc.kind} {self._name(p, sc)}: {sc.rpm} requests per minute. "
                    "Slow down or ask an admin for a higher limit.", "rate_limit_exceeded",
                    seconds_until_room(prev, curr - counted, sc.rpm, 1, frac))
                break
            granted[key] = fit
        if refusal is not None:
            self._give_back(leased)
            if adds:  # a refused request does not count against the limits (even if its caller is cancelled)
                await asyncio.shield(self._take_back(adds))
            raise refusal
        unused: list[tuple[str, int, int, int]] = []  # counted and not to be used: (kind, id, window, requests)
        for sc in scopes:
            key = f"req:{sc.kind}:{sc.ident}:{win}"
            if key not in granted:
                continue
            unused.append((sc.kind, sc.ident, win, adds[key] - granted[key]))
            if self.views is not None:
                old_win, left = self.views.get(sc.kind, sc.ident).new_lease(win, granted[key], now)
                unused.append((sc.kind, sc.ident, old_win, left))
                if granted[key] > 1:
                    self._schedule_sweep()
        for t in leased:
            t.view.taken += 1
        # Off the response's path: until it lands, other processes see a little more than was used.
        self._give_back_unused(unused)

    async def _trip(self, adds: dict[str, int], reads: list[str], leased: list[Taken],
                    refreshing: list[ScopeView]) -> tuple[dict[str, int], list[int]]:
        """One round trip to the shared counters, marked on the views whose next lease it fetches."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for v in refreshing:
            v.refreshing = done
        # Shielded: a caller cancelled meanwhile (its client left) does not cut the round trip short, so whether
        # the counts were applied is known, and they are taken back exactly when they were.
        trip = asyncio.ensure_future(self.counters.hit(adds, reads))
        try:
            return await asyncio.shield(trip)
        except asyncio.CancelledError:
            self._give_back(leased)
            trip.add_done_callback(lambda t: self._undo(t, adds))
            raise
        except BaseException:  # the store failed: the counts were most likely not applied (a bucket counting a
            self._give_back(leased)  # little high refuses early; one counting low could admit past the limit)
            raise
        finally:
            for v in refreshing:
                if v.refreshing is done:
                    v.refreshing = None
            # The waiters run after the caller's next await or return: by then the views hold the new lease.
            done.set_result(None)

    def _plan(self, p: Principal, scopes: list[_Scope], win: int, frac: float, now: float) -> tuple[
            list[str], dict[str, int], list[Taken], ScopeView | None]:
        """What the views answer: (buckets to read, buckets to count, leases taken from, or a view whose next
        lease another admission is fetching). Raises at once when a token view shows the limit reached."""
        reads: list[str] = []
        adds: dict[str, int] = {}
        leased: list[Taken] = []  # leases this request takes from, given back if it is refused
        for sc in scopes:
            v = self.views.get(sc.kind, sc.ident) if self.views is not None else None
            if sc.tpm:
                if v is not None and v.tokens_usable(win, now):
                    if window_estimate(v.tok_prev, v.tok_curr, frac) >= sc.tpm:  # lower bounds: surely over
                        self._give_back(leased)
                        raise self._over_tokens(p, sc, v.tok_prev, v.tok_curr, frac)
                    local = window_estimate(v.tok_prev, v.tok_curr, frac) < sc.tpm * TOKENS_LOCAL_BELOW
                else:
                    local = False
                if not local:
                    reads += [f"tok:{sc.kind}:{sc.ident}:{win - 1}", f"tok:{sc.kind}:{sc.ident}:{win}"]
            if sc.rpm:
                if v is not None and v.lease_usable(win, now):
                    v.lease_left -= 1
                    leased.append(Taken(v, sc.kind, sc.ident, v.lease_win, v.lease_at))
                elif (v is not None and v.refreshing is not None
                      and v.refreshing.get_loop() is asyncio.get_running_loop()):  # another loop's: stale
                    self._give_back(leased)
                    return [], {}, [], v
                else:
                    reads.append(f"req:{sc.kind}:{sc.ident}:{win - 1}")
                    adds[f"req:{sc.kind}:{sc.ident}:{win}"] = v.lease_size(sc.rpm, now) if v is not None else 1
        return reads, adds, leased, None

    def _give_back_unused(self, unused: list[tuple[str, int, int, int]]) -> None:
        """Take (kind, id, window, requests) back out of the request buckets, in the background."""
        adds: dict[str, int] = {}
        for kind, ident, win, n in unused:
            if n > 0:
                adds[f"req:{kind}:{ident}:{win}"] = adds.get(f"req:{kind}:{ident}:{win}", 0) + n
        if adds:
            self._take_back(adds)

    def _take_back(self, adds: dict[str, int]) -> asyncio.Task[None]:
        return self._background(self.counters.hit({k: -n for k, n in adds.items()}, []))

    def _undo(self, trip: asyncio.Future, adds: dict[str, int]) -> None:  # type: ignore[type-arg]
        if not trip.cancelled() and trip.exception() is None and adds:
            self._take_back(adds)

    def _schedule_sweep(self) -> None:
        """Give leases back soon after they expire, even if no admission comes (a process gone quiet)."""
        loop = asyncio.get_running_loop()
        if self._sweep is None or self._sweep_loop is not loop:
            self._sweep, self._sweep_loop = loop.call_later(LEASE_TTL_S * 1.2, self._sweep_now), loop

    def _sweep_now(self) -> None:
        self._sweep = None
        assert self.views is not None
        self._give_back_unused(self.views.take_unused(time.time()))
        if self.views.holding():
            self._schedule_sweep()

    async def release(self) -> None:
        """Give every lease's unused requests back (the server is stopping)."""
        if self.views is not None:
            self._give_back_unused(self.views.take_unused(None))
        while self._tasks:
            await asyncio.gather(*self._tasks)

    def _give_back(self, leased: list[Taken]) -> None:
        """Put requests taken from leases back: into the lease if it is still the one they came from, else into
        the bucket of their minute (an await let another admission replace the lease meanwhile)."""
        unused = []
        for t in leased:
            if t.view.lease_win == t.win and t.view.lease_at == t.at:
                t.view.lease_left += 1
            else:
                unused.append((t.kind, t.ident, t.win, 1))
        self._give_back_unused(unused)

    def _over_tokens(self, p: Principal, sc: _Scope, prev: int, curr: int, frac: float) -> LimitExceeded:
        assert sc.tpm is not None
        return LimitExceeded(
            f"Rate limit reached for {sc.kind} {self._name(p, sc)}: {sc.tpm} tokens per minute. "
            "Slow down or ask an admin for a higher limit.", "rate_limit_exceeded",
            seconds_until_room(prev, curr, sc.tpm, 1, frac))

    def _background(self, coro) -> asyncio.Task[None]:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(self._quietly(coro))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _quietly(coro) -> None:  # type: ignore[no-untyped-def]
        try:
            await coro
        except Exception:  # the response is not failed for it: a bucket is off until the window moves on
            log.exception("could not update the rate-limit counters")

    def note_tokens(self, p: Principal, tokens: int, now: float | None = None) -> None:
        """This process's own request ended with ``tokens``: its token views count them at once."""
        if self.views is None or tokens <= 0:
            return
        win = int((time.time() if now is None else now) // WINDOW_S)
        for sc in _scopes(p):
            if sc.tpm:
                self.views.add_tokens(sc.kind, sc.ident, win, tokens)

    @staticmethod
    def token_adds(p: Principal, tokens: int, now: float | None = None) -> dict[str, int]:
        """The token buckets a request's tokens add to (none without a tokens-per-minute limit)."""
        if tokens <= 0:
            return {}
        win = int((time.time() if now is None else now) // WINDOW_S)
        return {f"tok:{sc.kind}:{sc.ident}:{win}": tokens for sc in _scopes(p) if sc.tpm}

    def count_tokens(self, p: Principal, tokens: int) -> None:
        """Count a finished request's tokens, off the response's path: in this process at once (a task per
        request cost more than the count), in shared counters from a background task."""
        if isinstance(self.counters, MemoryCounters):
            for key, n in self.token_adds(p, tokens).items():
                self.counters.add_now(key, n)
        else:
            self._background(self.add_tokens(p, tokens))

    async def add_tokens(self, p: Principal, tokens: int, now: float | None = None) -> None:
        adds = self.token_adds(p, tokens, now)
        if adds:
            await self.counters.hit(adds, [])

    @staticmethod
    def _name(p: Principal, sc: _Scope) -> str:
        return f"{p.key_prefix}…" if sc.kind == "key" else repr(p.project_name)
