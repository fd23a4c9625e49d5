"""Who is calling and what it costs, as the routes use it: the `principal` dependency (API key → project),
admission (budget, rate limits) before generation, and the Meter that writes each request's ledger row once."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import Request

from qwenhost.gateway.keys import Principal
from qwenhost.gateway.service import Gateway, Settlement
from qwenhost.router.local import Finish, Prepared

log = logging.getLogger("qwenhost.api")


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key") or None


def gateway_of(request: Request) -> Gateway:
    return request.app.state.qwenhost.gateway


async def principal(request: Request) -> Principal:
    """FastAPI dependency: the caller, or AuthError (→ 401) when the key is missing, unknown, revoked, expired."""
    remote = request.client.host if request.client else ""
    return gateway_of(request).authenticate(presented_key(request), remote)


async def admin_principal(request: Request) -> Principal:
    p = await principal(request)
    if not p.is_admin:
        gateway_of(request).audit.auth_failure("admin_key_required", p.key_prefix,
                                               request.client.host if request.client else "")
        raise AdminRequired(p)
    return p


class AdminRequired(Exception):
    def __init__(self, p: Principal) -> None:
        what = f"the API key {p.key_prefix}…" if p.key_id is not None else "this unauthenticated request"
        super().__init__(f"{what} is not an admin key; admin routes need a key created with "
                         "`qwenhost keys create --project P --admin`")
        self.message = str(self)


@dataclass
class Meter:
    """Bills one request exactly once: when it completes (the row is committed before the response's last
    bytes), or, if the client leaves or generation fails after the first token, for what was generated."""

    gateway: Gateway
    who: Principal
    settlement: Settlement
    prep: Prepared
    settled: bool = False

    async def completed(self, fin: Finish) -> None:
        self.settled = True
        await self.gateway.settle(self.who, self.settlement, prompt_tokens=fin.prompt_tokens,
                                  cached_tokens=fin.cached_tokens, completion_tokens=fin.completion_tokens,
                                  status="completed")

    def abandoned(self, status: str) -> None:
        """Bill a request that ends without a finish. Safe to call from a cancelled task: it only enqueues."""
        if self.settled:
            return
        self.settled = True
        if self.prep.completion_tokens <= 0:
            return  # failed or left before the first token: not billed
        try:
            self.gateway.settle_nowait(self.who, self.settlement, prompt_tokens=len(self.prep.gen.prompt_tokens),
                                       cached_tokens=0, completion_tokens=self.prep.completion_tokens,
                                       status=status)
        except Exception:
            log.exception("could not bill an abandoned request")
