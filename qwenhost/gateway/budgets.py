"""Monthly budgets (a hard stop), checked before generation against the month-to-date spend the ledger keeps.

Requests already running when a budget runs out finish and are billed; the next one is refused. With one process
the spend lives in memory, loaded once from the database and kept current by the ledger. With several processes
(counters in the database or Redis) other processes spend too, so the spend is read from the database: at most
once a second while far from the budget (a round trip per request cost more than the rest of admission), and at
every admission once it is near, so that several processes together stop where one would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time

from qwenhost.gateway.keys import Principal
from qwenhost.gateway.ledger import UsageLedger, month_of
from qwenhost.gateway.limits import LimitExceeded
from qwenhost.gateway.prices import nano_to_usd

SHARED_SPEND_TTL_S = 1.0
# "Near" the budget: less left than a tenth of it, than the spend of the last two intervals at the rate the
# database showed between reads, or than four of the largest amounts this process saw committed at once.
NEAR_FRACTION = 10
NEAR_INTERVALS = 2.0
NEAR_BATCHES = 4

Scope = tuple[str, int, str]  # ("key" | "project", id, "YYYY-MM")


def _usd(nusd: int) -> str:
    return f"{nano_to_usd(nusd):.9f}".rstrip("0").rstrip(".") if nusd % 10_000_000 else f"{nano_to_usd(nusd):.2f}"


class BudgetGuard:
    def __init__(self, ledger: UsageLedger, shared: bool) -> None:
        self.ledger = ledger
        self.shared = shared
        self._spend: dict[Scope, int] = {}  # the last read, plus what this process committed since
        self._read_at: dict[Scope, float] = {}
        self._read: dict[Scope, int] = {}  # the database's value at the last read, without this process's since
        # The rate all processes spend at, in nano-USD a second: measured from a read at least a second old, since
        # reads close together (near a budget every admission reads) mostly see no commit in between.
        self._rate_from: dict[Scope, tuple[int, float]] = {}
        self._rate: dict[Scope, float] = {}
        self._largest: dict[Scope, int] = {}  # the largest amount committed at once that this process saw
        self.reads = 0
        self._lock = threading.Lock()
        ledger.on_spend(self._on_spend)

    def _on_spend(self, deltas: dict[Scope, int]) -> None:
        with self._lock:
            for k, amount in deltas.items():
                if k in self._spend:  # only the scopes a budget is checked for
                    self._spend[k] += amount
                    if amount > self._largest.get(k, 0):
                        self._largest[k] = amount

    def _near(self, k: Scope, budget: int) -> bool:
        margin = max(budget // NEAR_FRACTION, int(self._rate.get(k, 0.0) * NEAR_INTERVALS * SHARED_SPEND_TTL_S),
                     NEAR_BATCHES * self._largest.get(k, 0))
        return budget - self._spend[k] <= margin

    def _cached(self, k: Scope, budget: int) -> int | None:
        """The spend to judge by without a read, or None when the database must be asked."""
        with self._lock:
            if k not in self._spend:
                return None
            if not self.shared:
                return self._spend[k]
            if self._read[k] >= budget:
                # Spend only grows within a month, so what the database said is final. (Not the cached value:
                # a read that lands between a commit and the ledger telling us about it counts that commit
                # twice until the next read.)
                return self._read[k]
            if time.monotonic() - self._read_at[k] >= SHARED_SPEND_TTL_S or self._near(k, budget):
                return None
            return self._spend[k]

    def _load(self, k: Scope, budget: int) -> int:
        if self.shared:
            cached = self._cached(k, budget)  # another admission may have read it meanwhile
            if cached is not None:
                return cached
        value = self.ledger.spend(*k)
        now = time.monotonic()
        with self._lock:
            self.reads += 1
            if not self.shared:
                return self._spend.setdefault(k, value)
            start = self._rate_from.get(k)
            if start is None:
                self._rate_from[k] = (value, now)
            elif now - start[1] >= SHARED_SPEND_TTL_S:
                self._rate[k] = max(0.0, (value - start[0]) / (now - start[1]))
                self._rate_from[k] = (value, now)
            self._read[k] = value
            self._spend[k], self._read_at[k] = value, now
            return value

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
            k = (scope, ident, month)
            spent = self._cached(k, budget)
            if spent is None:  # a database read; off the event loop where other processes share the database
                spent = await asyncio.to_thread(self._load, k, budget) if self.shared else self._load(k, budget)
            if spent >= budget:
                raise LimitExceeded(
                    f"You exceeded your current quota: the {what} has spent ${_usd(spent)} of its "
                    f"${_usd(budget)} budget for {month}. Raise the budget or wait for next month.",
                    "insufficient_quota")
