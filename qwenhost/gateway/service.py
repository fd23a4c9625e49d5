"""The gateway as the API sees it: authenticate a request, admit it (budget, then rate), settle it (price it,
write its ledger row, count its tokens against the limits)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import time
from dataclasses import dataclass, field

from qwenhost.gateway.audit import AuditLog
from qwenhost.gateway.budgets import BudgetGuard
from qwenhost.gateway.counters import CounterStore, MemoryCounters, PostgresCounters, RedisCounters, database_counters
from qwenhost.gateway.db import Database
from qwenhost.gateway.keys import AuthError, KeyStore, Principal
from qwenhost.gateway.ledger import UsageEntry, UsageLedger
from qwenhost.gateway.limits import RateLimiter
from qwenhost.gateway.prices import PriceBook
from qwenhost.gateway.projects import ProjectStore

log = logging.getLogger("qwenhost.gateway")
REDIS_URL_ENV = "QWENHOST_REDIS_URL"
LIMITS_ENV = "QWENHOST_LIMITS"  # memory | database | redis (default: redis if configured, else by database)
DEFAULT_PROJECT = "default"
KEY_CHECK_INTERVAL_S = 2.0


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _counters(db: Database, redis_url: str | None, mode: str | None) -> CounterStore:
    mode = (mode or "").strip().lower() or ("redis" if redis_url else "memory" if db.is_sqlite else "database")
    if mode == "redis":
        if not redis_url:
            raise ValueError(f"{LIMITS_ENV}=redis needs {REDIS_URL_ENV} (e.g. redis://127.0.0.1:6379/0)")
        return RedisCounters(redis_url, db.installation_id())
    if mode == "database":
        return database_counters(db)
    if mode == "memory":
        return MemoryCounters()
    raise ValueError(f"{LIMITS_ENV} must be memory, database or redis (got {mode!r})")


@dataclass
class Settlement:
    """What one request used, as the API reports it when the request ends."""

    request_id: str
    started_at: dt.datetime
    started_mono: float
    model: str
    backend: str
    price_names: list[str] = field(default_factory=list)


class Gateway:
    def __init__(self, db: Database, *, redis_url: str | None = None, limits_mode: str | None = None) -> None:
        db.migrate()
        self.db = db
        self.projects = ProjectStore(db)
        self.keys = KeyStore(db)
        self.prices = PriceBook(db)
        self.ledger = UsageLedger(db)
        self.audit = AuditLog(db)
        self.counters = _counters(db, redis_url, limits_mode)
        self.limiter = RateLimiter(self.counters)
        self.budgets = BudgetGuard(self.ledger, shared=self.counters.name != "memory")
        # Counters in the ledger's own PostgreSQL: a request's tokens are counted by its ledger statement, in
        # the same round trip, instead of by a second statement per request on the event loop.
        self._tokens_with_ledger = isinstance(self.counters, PostgresCounters)
        self.auth_required = True
        self._keys_checked = 0.0
        self._anonymous: Principal | None = None

    @classmethod
    def from_env(cls, *, serving: bool = False) -> Gateway:
        """The gateway configured by the environment; ``serving`` for the long-running server process."""
        return cls(Database(background_checkpoint=serving), redis_url=os.environ.get(REDIS_URL_ENV) or None,
                   limits_mode=os.environ.get(LIMITS_ENV) or None)

    def configure_auth(self, host: str) -> str:
        """Decide whether keys are required, and say so. Off only on loopback while no key exists."""
        if is_loopback(host) and not self.keys.any_exist():
            self.auth_required = False
            return (f"authentication is OFF: bound to {host} and no API key exists yet. Anyone on this machine "
                    "can call the API. Create a key (`qwenhost keys create --project NAME`) to turn it on.")
        self.auth_required = True
        said = f"authentication is on: every request needs an API key (limits kept in {self.counters.name})"
        if not self.keys.any_exist():
            said += (f". No API key exists yet, so every request to {host} is refused until you create one: "
                     "`qwenhost keys create --project NAME` (add --admin for the admin API)")
        return said

    def _auth_still_off(self) -> bool:
        if self.auth_required:
            return False
        now = time.monotonic()
        if now - self._keys_checked > KEY_CHECK_INTERVAL_S:
            self._keys_checked = now
            if self.keys.any_exist():  # a key was created meanwhile (e.g. by the CLI): from now on, keys
                self.auth_required = True
                log.warning("an API key now exists: authentication is on")
                return False
        return True

    def authenticate(self, presented: str | None, remote: str = "") -> Principal:
        if self._auth_still_off():
            if self._anonymous is None:
                proj = self.projects.ensure(DEFAULT_PROJECT)
                self._anonymous = Principal(project_id=proj.id, project_name=proj.name, key_id=None,
                                            key_prefix="", project_rpm=proj.rpm, project_tpm=proj.tpm,
                                            project_budget_nusd=proj.monthly_budget_nusd)
            return self._anonymous
        if not presented:
            self.audit.auth_failure("missing_api_key", "", remote)
            raise AuthError("You didn't provide an API key. Send it as 'Authorization: Bearer KEY' "
                            "(create one with `qwenhost keys create --project P`).")
        try:
            return self.keys.authenticate(presented)
        except AuthError as exc:
            self.audit.auth_failure(exc.code, presented[:11] if presented.startswith("qh-") else "", remote)
            raise

    async def admit(self, p: Principal) -> None:
        """Before generation: budget (hard stop), then rate limits. Raises LimitExceeded."""
        await self.budgets.check(p)
        await self.limiter.admit(p)

    def start(self, request_id: str, model: str, backend: str, price_names: list[str] | None = None) -> Settlement:
        return Settlement(request_id, dt.datetime.now(dt.UTC).replace(tzinfo=None), time.monotonic(), model,
                          backend, price_names or [model])

    def _cost(self, names: list[str], prompt: int, cached: int, completion: int) -> int:
        for name in names:
            if self.prices.tier_for(name, prompt) is not None:
                return self.prices.cost(name, prompt, cached, completion)
        return 0

    def _entry(self, p: Principal, s: Settlement, *, prompt_tokens: int, cached_tokens: int,
               completion_tokens: int, status: str) -> UsageEntry:
        tokens = prompt_tokens + completion_tokens
        self.limiter.note_tokens(p, tokens)
        adds = self.limiter.token_adds(p, tokens) if self._tokens_with_ledger and (p.tpm or p.project_tpm) else {}
        return UsageEntry(
            request_id=s.request_id, created_at=s.started_at, project_id=p.project_id, key_id=p.key_id,
            model=s.model, backend=s.backend, prompt_tokens=prompt_tokens, cached_tokens=cached_tokens,
            completion_tokens=completion_tokens,
            cost_nusd=self._cost(s.price_names, prompt_tokens, cached_tokens, completion_tokens),
            latency_ms=int((time.monotonic() - s.started_mono) * 1000), status=status,
            counter_adds=tuple(adds.items()))

    def _count_apart(self, p: Principal, entry: UsageEntry) -> None:
        """Count the tokens against the limits, off the response's path (the next admission reads them, not this
        response), unless the ledger statement counts them."""
        if (p.tpm or p.project_tpm) and not self._tokens_with_ledger:
            self.limiter.count_tokens(p, entry.prompt_tokens + entry.completion_tokens)

    async def settle(self, p: Principal, s: Settlement, *, prompt_tokens: int, cached_tokens: int,
                     completion_tokens: int, status: str) -> UsageEntry:
        """Write the request's ledger row (awaiting the commit) and count its tokens against the limits."""
        entry = self._entry(p, s, prompt_tokens=prompt_tokens, cached_tokens=cached_tokens,
                            completion_tokens=completion_tokens, status=status)
        await self.ledger.record(entry)
        self._count_apart(p, entry)
        return entry

    def settle_nowait(self, p: Principal, s: Settlement, *, prompt_tokens: int, cached_tokens: int,
                      completion_tokens: int, status: str) -> UsageEntry:
        """Queue the row without waiting (for cancelled tasks, which cannot await); the writer commits it."""
        entry = self._entry(p, s, prompt_tokens=prompt_tokens, cached_tokens=cached_tokens,
                            completion_tokens=completion_tokens, status=status)
        self.ledger.enqueue(entry)
        self._count_apart(p, entry)
        return entry

    def close(self) -> None:
        self.ledger.close()
        self.db.close()
