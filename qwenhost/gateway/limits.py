"""Rate limits (requests and tokens per minute, per key and per project) and monthly budgets (hard stop).

Rates use a sliding window over per-minute buckets: the previous minute's count, weighted by how much of it
still lies inside the last 60 s, plus the current minute's. A request counts when it is admitted; its tokens
count when it ends (they are not known before), so a tokens-per-minute limit stops the requests that come
after the minute's tokens are spent. Budgets are checked before generation against the month-to-date spend
the ledger keeps; requests already running when a budget runs out finish (and are billed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import threading
import time
from dataclasses import dataclass

from qwenhost.gateway.counters import CounterStore
from qwenhost.gateway.keys import Principal
from qwenhost.gateway.ledger import UsageLedger, month_of
from qwenhost.gateway.prices import nano_to_usd

WINDOW_S = 60
SHARED_SPEND_TTL_S = 1.0


def _usd(nusd: int) -> str:
    return f"{nano_to_usd(nusd):.9f}".rstrip("0").rstrip(".") if nusd % 10_000_000 else f"{nano_to_usd(nusd):.2f}"


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

    async def admit(self, p: Principal, now: float | None = None) -> None:
        scopes = _scopes(p)
        if not scopes:
            return
        now = time.time() if now is None else now
        win, frac = int(now // WINDOW_S), (now % WINDOW_S) / WINDOW_S
        # Everything this admission reads and counts, in one round trip to the counter store: the request is
        # counted first and taken back if it is refused (rare), rather than read, checked, then counted.
        reads: list[str] = []
        adds: dict[str, int] = {}
        for sc in scopes:
            if sc.tpm:
                reads += [f"tok:{sc.kind}:{sc.ident}:{win - 1}", f"tok:{sc.kind}:{sc.ident}:{win}"]
            if sc.rpm:
                reads.append(f"req:{sc.kind}:{sc.ident}:{win - 1}")
                adds[f"req:{sc.kind}:{sc.ident}:{win}"] = 1
        added, read_values = await self.counters.hit(adds, reads)
        values = dict(zip(reads, read_values, strict=True))
        refusal: LimitExceeded | None = None
        for sc in scopes:
            if sc.tpm:
                prev, curr = values[f"tok:{sc.kind}:{sc.ident}:{win - 1}"], values[f"tok:{sc.kind}:{sc.ident}:{win}"]
                if window_estimate(prev, curr, frac) >= sc.tpm:
                    refusal = LimitExceeded(
                        f"Rate limit reached for {sc.kind} {self._name(p, sc)}: {sc.tpm} tokens per minute. "
                        "Slow down or ask an admin for a higher limit.", "rate_limit_exceeded",
                        seconds_until_room(prev, curr, sc.tpm, 1, frac))
                    break
        for sc in scopes if refusal is None else ():
            if not sc.rpm:
                continue
            curr, prev = added[f"req:{sc.kind}:{sc.ident}:{win}"], values[f"req:{sc.kind}:{sc.ident}:{win - 1}"]
            if window_estimate(prev, curr, frac) > sc.rpm:
                refusal = LimitExceeded(
                    f"Rate limit reached for {sc.kind} {self._name(p, sc)}: {sc.rpm} requests per minute. "
                    "Slow down or ask an admin for a higher limit.", "rate_limit_exceeded",
                    seconds_until_room(prev, curr - 1, sc.rpm, 1, frac))
                break
        if refusal is not None:
            if adds:  # a refused request does not count against the limits
                await self.counters.hit({k: -1 for k in adds}, [])
            raise refusal

    @staticmethod
    def token_adds(p: Principal, tokens: int, now: float | None = None) -> dict[str, int]:
        """The token buckets a request's tokens add to (none without a tokens-per-minute limit)."""
        if tokens <= 0:
            return {}
        win = int((time.time() if now is None else now) // WINDOW_S)
        return {f"tok:{sc.kind}:{sc.ident}:{win}": tokens for sc in _scopes(p) if sc.tpm}

    async def add_tokens(self, p: Principal, tokens: int, now: float | None = None) -> None:
        adds = self.token_adds(p, tokens, now)
        if adds:
            await self.counters.hit(adds, [])

    @staticmethod
    def _name(p: Principal, sc: _Scope) -> str:
        return f"{p.key_prefix}…" if sc.kind == "key" else repr(p.project_name)


class BudgetGuard:
    """Month-to-date spend against monthly budgets. With one process the spend lives in memory, loaded once
    from the database and kept current by the ledger; with several processes it is read from the database."""

    def __init__(self, ledger: UsageLedger, shared: bool) -> None:
        self.ledger = ledger
        self.shared = shared
        self._spend: dict[tuple[str, int, str], int] = {}
        self._read_at: dict[tuple[str, int, str], float] = {}
        self._lock = threading.Lock()
        ledger.on_spend(self._on_spend)

    def _on_spend(self, deltas: dict[tuple[str, int, str], int]) -> None:
        with self._lock:
            for k, amount in deltas.items():
                if k in self._spend:
                    self._spend[k] += amount

    def _spent(self, scope: str, ident: int, month: str) -> int:
        k = (scope, ident, month)
        if self.shared:
            # Other processes spend too: re-read at most every SHARED_SPEND_TTL_S (a database round trip on
            # every request cost more than the rest of admission); this process's own spend is added as it
            # happens, so a budget is overshot by at most what the other processes spent in that second.
            now = time.monotonic()
            with self._lock:
                if k in self._spend and now - self._read_at.get(k, -1e9) < SHARED_SPEND_TTL_S:
                    return self._spend[k]
            value = self.ledger.spend(scope, ident, month)
            with self._lock:
                self._spend[k], self._read_at[k] = value, now
            return value
        with self._lock:
            if k in self._spend:
                return self._spend[k]
        value = self.ledger.spend(scope, ident, month)
        with self._lock:
            return self._spend.setdefault(k, value)

    def _fresh(self, k: tuple[str, int, str]) -> bool:
        return k in self._spend and time.monotonic() - self._read_at.get(k, -1e9) < SHARED_SPEND_TTL_S

    async def check(self, p: Principal, now: dt.datetime | None = None) -> None:
        checks = []
        if p.key_id is not None and p.budget_nusd is not None:
            checks.append(("key", p.key_id, p.budget_nusd, f"API key {p.key_prefix}…"))
        if p.project_budget_nusd is not None:
            checks.append(("project", p.project_id, p.project_budget_nusd, f"project {p.project_name!r}"))
        if not checks:
            return
        month = month_of(now or dt.datetime.now(dt.UTC))
        for scope, ident, budget, what in checks:
            spent = (await asyncio.to_thread(self._spent, scope, ident, month) if self.shared
                     and not self._fresh((scope, ident, month)) else self._spent(scope, ident, month))
            if spent >= budget:
                raise LimitExceeded(
                    f"You exceeded your current quota: the {what} has spent ${_usd(spent)} of its "
                    f"${_usd(budget)} budget for {month}. Raise the budget or wait for next month.",
                    "insufficient_quota")
