"""The Meter on its own (qwenhost/api/metering.py): a request is billed once, whatever ends it, and not at all
when it ends before its first token."""

from __future__ import annotations

import asyncio

from qwenhost.api.metering import Meter
from qwenhost.engine.sequence import GenerationRequest
from qwenhost.gateway.keys import Principal
from qwenhost.gateway.service import Gateway
from qwenhost.router.local import Finish, Prepared
from tests.gateway.test_exactly_once import ledger


def test_meter_bills_once_and_nothing_before_the_first_token(gateway: Gateway) -> None:
    gw = gateway
    proj = gw.projects.create("meter")
    who = Principal(project_id=proj.id, project_name=proj.name, key_id=None, key_prefix="")

    def meter(rid: str, generated: int) -> Meter:
        prep = Prepared(GenerationRequest(prompt_tokens=[0] * 5, max_tokens=100), None, completion_tokens=generated)
        return Meter(gw, who, gw.start(rid, "echo", "echo"), prep)

    async def scenario() -> None:
        left = meter("chatcmpl-left", 7)
        left.abandoned("disconnected")
        left.abandoned("failed")  # the route's later cleanup: already billed
        meter("chatcmpl-early", 0).abandoned("failed")  # failed before its first token
        meter("chatcmpl-early-left", 0).abandoned("disconnected")
        done = meter("chatcmpl-done", 9)
        await done.completed(Finish("stop", 5, 9, 0))
        done.abandoned("disconnected")  # a stream's finally after a completed response
        # A second write of the same request id (a retried commit, another process) changes nothing.
        await gw.settle(who, gw.start("chatcmpl-done", "echo", "echo"), prompt_tokens=1, cached_tokens=0,
                        completion_tokens=1, status="failed")

    asyncio.run(scenario())
    gw.ledger.close()  # abandoned rows are only queued: this commits them
    got = {rid: (r.status, r.completion_tokens, r.prompt_tokens) for rid, r in ledger(gw.db.url).items()}
    assert got == {"chatcmpl-left": ("disconnected", 7, 5), "chatcmpl-done": ("completed", 9, 5)}
