"""BudgetGuard's reads of the shared spend: once a second while far from the budget, at every admission near it,
and never again in a single process (which keeps its spend current itself)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from qwenhost.gateway import budgets
from qwenhost.gateway.budgets import BudgetGuard
from qwenhost.gateway.keys import Principal
from qwenhost.gateway.limits import LimitExceeded

NOW = dt.datetime(2026, 11, 24, 12, 0)
MONTH = "2026-11"


class FakeLedger:
    """The database's month-to-date spend of key 7, as other processes leave it."""

    def __init__(self) -> None:
        self.value = 0
        self.listeners: list = []

    def on_spend(self, listener) -> None:  # type: ignore[no-untyped-def]
        self.listeners.append(listener)

    def spend(self, scope: str, ident: int, month: str) -> int:
        assert (scope, ident, month) == ("key", 7, MONTH)
        return self.value

    def commit(self, amount: int) -> None:
        """This process's ledger committed ``amount`` (and the database has it)."""
        self.value += amount
        for listener in self.listeners:
            listener({("key", 7, MONTH): amount})


def who(budget: int) -> Principal:
    return Principal(project_id=1, project_name="p", key_id=7, key_prefix="qh-00000007", budget_nusd=budget)


def check(guard: BudgetGuard, budget: int) -> bool:
    try:
        asyncio.run(guard.check(who(budget), NOW))
        return True
    except LimitExceeded as exc:
        assert exc.code == "insufficient_quota"
        return False


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    t = [1000.0]
    monkeypatch.setattr(budgets.time, "monotonic", lambda: t[0])
    return t


def test_far_from_the_budget_the_spend_is_read_once_a_second(clock: list[float]) -> None:
    ledger = FakeLedger()
    guard = BudgetGuard(ledger, shared=True)  # type: ignore[arg-type]
    assert check(guard, 1_000_000) and guard.reads == 1
    ledger.value = 500_000  # another process spent half
    assert check(guard, 1_000_000) and guard.reads == 1  # not seen within the second
    clock[0] += 1.0
    assert check(guard, 1_000_000) and guard.reads == 2


def test_near_the_budget_every_admission_reads(clock: list[float]) -> None:
    ledger = FakeLedger()
    guard = BudgetGuard(ledger, shared=True)  # type: ignore[arg-type]
    ledger.value = 950_000  # a tenth of the budget or less is left
    assert check(guard, 1_000_000) and guard.reads == 1
    assert check(guard, 1_000_000) and guard.reads == 2
    ledger.value = 1_000_000  # another process spent the rest: the next admission sees it at once
    assert not check(guard, 1_000_000) and guard.reads == 3
    for _ in range(5):  # spend only grows within a month: refusals need no more reads (a spent key hammering)
        assert not check(guard, 1_000_000)
    assert guard.reads == 3
    assert check(guard, 2_000_000) and guard.reads == 3  # a raised budget: half left, far, the cached spend does


def test_large_requests_make_the_margin_wider(clock: list[float]) -> None:
    ledger = FakeLedger()
    guard = BudgetGuard(ledger, shared=True)  # type: ignore[arg-type]
    assert check(guard, 1_000_000)
    ledger.commit(200_000)  # one request cost a fifth of the budget
    ledger.value += 200_000  # and another process spent as much meanwhile
    assert check(guard, 1_000_000) and guard.reads == 2  # 800,000 left <= 4 x 200,000: read, see 400,000
    ledger.value += 600_000
    assert not check(guard, 1_000_000) and guard.reads == 3


def test_the_rate_between_reads_makes_the_margin_wider(clock: list[float]) -> None:
    ledger = FakeLedger()
    guard = BudgetGuard(ledger, shared=True)  # type: ignore[arg-type]
    budget = 10_000_000
    assert check(guard, budget)
    clock[0] += 1.0
    ledger.value = 4_000_000  # others spend 4,000,000 a second: two seconds' worth is more than what is left
    assert check(guard, budget) and guard.reads == 2
    assert check(guard, budget) and guard.reads == 3  # 6,000,000 left <= 2 x 4,000,000: near
    clock[0] += 0.5
    ledger.value = 10_000_000
    assert not check(guard, budget)


def test_one_process_reads_once_and_counts_its_own_spend(clock: list[float]) -> None:
    ledger = FakeLedger()
    guard = BudgetGuard(ledger, shared=False)  # type: ignore[arg-type]
    assert check(guard, 1_000_000)
    ledger.commit(990_000)
    clock[0] += 10
    assert check(guard, 1_000_000) and guard.reads == 1
    ledger.commit(10_000)
    assert not check(guard, 1_000_000) and guard.reads == 1


def test_the_rate_survives_reads_close_together(clock: list[float]) -> None:
    """Near a budget every admission reads, mostly milliseconds apart with no commit between: those pairs must
    not reset the measured rate to nothing (the key would look far again for a whole second)."""
    ledger = FakeLedger()
    guard = BudgetGuard(ledger, shared=True)  # type: ignore[arg-type]
    budget = 10_000_000
    assert check(guard, budget)
    clock[0] += 1.0
    ledger.value = 4_000_000  # others spend 4,000,000 a second
    assert check(guard, budget)
    clock[0] += 0.001
    assert check(guard, budget) and guard.reads == 3  # near (6,000,000 left <= 2 s x 4,000,000 a second)
    clock[0] += 0.9
    ledger.value = 10_000_000  # spent, within the second
    assert not check(guard, budget)


def test_a_commit_counted_twice_does_not_refuse_for_good(clock: list[float]) -> None:
    """A read that lands between a commit and the ledger's report of it counts that commit twice in the cache;
    only what the database said may refuse without another read."""
    ledger = FakeLedger()
    guard = BudgetGuard(ledger, shared=True)  # type: ignore[arg-type]
    ledger.value = 920_000
    assert check(guard, 1_000_000)
    ledger.value += 40_000  # this process's commit reached the database ...
    assert check(guard, 1_000_000)  # ... an admission read it (near: every admission reads) ...
    for listener in ledger.listeners:  # ... and then the ledger reported it
        listener({("key", 7, MONTH): 40_000})
    clock[0] += 60
    assert check(guard, 1_000_000)  # 960,000 spent, not the cache's 1,000,000
