"""What one process may decide about rate limits without asking the shared counters (PostgreSQL or Redis).

An admission against shared counters is a round trip, the largest part of what the gateway adds to a request
once its ledger row is written on the event loop. Two things let most admissions skip it:

* **Request leases.** When a scope (a key or a project) is busy, an admission counts several requests at once
  in the shared bucket and keeps the rest as a lease; the next requests of that scope take from the lease.
  Every leased request was counted and checked against the limit before the lease was granted, and the window
  only decays within a minute, so a requests-per-minute limit still holds exactly across processes: leases
  can refuse early, never admit late. A lease is sized to what the scope used in the last LEASE_TTL_S and at
  most 1/LEASE_SHARE of the limit (so limits under 40 a minute never lease), it lives LEASE_TTL_S at most and
  within its minute, and what was left of it is given back to the bucket when it is replaced, when a timer
  finds it past its time (a quarter second later at most), or when the server stops.
* **A token view.** The token buckets read at an admission, plus the tokens of this process's own requests
  since, stand for LEASE_TTL_S. They are lower bounds (buckets only grow within a minute), so a refusal on
  them is right; an admission on them is taken only while they are under TOKENS_LOCAL_BELOW of the limit, so
  what other processes spent in that quarter second must exceed half the limit to slip past it.

With counters in memory (one process) none of this applies: they cost no round trip.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

LEASE_TTL_S = 0.25
LEASE_MAX = 32
LEASE_SHARE = 20
TOKENS_LOCAL_BELOW = 0.5
_MAX_VIEWS = 10_000


@dataclass
class ScopeView:
    """This process's lease and token view for one scope."""

    lease_win: int = -1
    lease_left: int = 0  # requests counted in the bucket of lease_win and not yet admitted
    lease_at: float = -math.inf
    taken: int = 0  # admitted since lease_at: the scope's recent rate sizes the next lease
    tok_win: int = -1
    tok_prev: int = 0
    tok_curr: int = 0
    tok_at: float = -math.inf
    # An admission fetching this scope's next lease, and how many wait for it (the lease is sized for them too).
    refreshing: asyncio.Future[None] | None = None
    waiting: int = 0

    def lease_usable(self, win: int, now: float) -> bool:
        return self.lease_left > 0 and self.lease_win == win and 0 <= now - self.lease_at < LEASE_TTL_S

    def tokens_usable(self, win: int, now: float) -> bool:
        return self.tok_win == win and 0 <= now - self.tok_at < LEASE_TTL_S

    def lease_size(self, rpm: int, now: float) -> int:
        """How many requests the next lease counts: this one, plus what the last LEASE_TTL_S suggests will come."""
        cap = min(LEASE_MAX, rpm // LEASE_SHARE)
        if cap <= 1:
            return 1
        if not math.isfinite(self.lease_at) or now <= self.lease_at:
            return min(cap, 1 + self.waiting)
        rate = self.taken / max(now - self.lease_at, 1e-3)
        return min(cap, max(1 + self.waiting, int(rate * LEASE_TTL_S)))

    def new_lease(self, win: int, granted: int, now: float) -> tuple[int, int]:
        """Hold a fresh lease of ``granted`` requests (one of them admitted now); returns (window, requests) of
        the lease it replaces that were never used, for the caller to give back."""
        unused = (self.lease_win, self.lease_left)
        self.lease_win, self.lease_left, self.lease_at, self.taken = win, granted - 1, now, 1
        return unused


@dataclass(frozen=True)
class Taken:
    """A request an admission took from a lease: which lease, so that it goes back to the right bucket."""

    view: ScopeView
    kind: str
    ident: int
    win: int
    at: float


class Views:
    """ScopeViews by (kind, id). Past _MAX_VIEWS, those holding no lease are dropped (that costs a round trip;
    a view holding a lease is kept, or its requests could never be given back)."""

    def __init__(self) -> None:
        self._views: dict[tuple[str, int], ScopeView] = {}

    def get(self, kind: str, ident: int) -> ScopeView:
        v = self._views.get((kind, ident))
        if v is None:
            if len(self._views) >= _MAX_VIEWS:
                self._views = {k: x for k, x in self._views.items() if x.lease_left > 0 or x.refreshing is not None}
            v = self._views[(kind, ident)] = ScopeView()
        return v

    def holding(self) -> bool:
        return any(v.lease_left > 0 for v in self._views.values())

    def take_unused(self, now: float | None) -> list[tuple[str, int, int, int]]:
        """(kind, id, window, requests) of the leases past their time at ``now`` (None: of all of them),
        forgotten here: the caller gives those requests back, so a key that went quiet does not keep them."""
        out = []
        for (kind, ident), v in self._views.items():
            if v.lease_left > 0 and (now is None or not 0 <= now - v.lease_at < LEASE_TTL_S):
                out.append((kind, ident, v.lease_win, v.lease_left))
                v.lease_left = 0
        return out

    def add_tokens(self, kind: str, ident: int, win: int, tokens: int) -> None:
        v = self._views.get((kind, ident))
        if v is not None and v.tok_win == win:
            v.tok_curr += tokens
