"""The FastAPI app: OpenAI-compatible routes, health, models, Prometheus metrics, and guards on input."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwenhost.api.errors import error_response, install_error_handlers
from qwenhost.api.hot_path import HOT_PATHS, HotRoutes
from qwenhost.api.metering import principal
from qwenhost.api.routes_admin import router as admin_router
from qwenhost.api.routes_openai import router as openai_router
from qwenhost.api.state import ServerState


class BodyTooLarge(HTTPException):
    """A body sent without a Content-Length (in chunks) grew past the limit: a 413 (errors.py words it).

    An HTTPException, because FastAPI turns anything else raised while it reads a body into a 400."""

    def __init__(self) -> None:
        super().__init__(status_code=413)


def _limited(receive: Receive, limit: int) -> Receive:
    received = 0

    async def receive_within_limit() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge()
        return message

    return receive_within_limit


class _GuardAndCount:
    """Refuses bodies over the size limit (before they are read when they say their length, else as they
    arrive), and counts responses by route and status.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware passes every response
    through a memory stream and extra tasks, which cost about 0.2 ms of CPU per request and more per SSE chunk
    (bench/gateway_overhead.py: about half of a streamed request's CPU on the echo backend)."""

    def __init__(self, app: ASGIApp, state: ServerState, requests_total: Counter) -> None:
        self.app, self.state, self.requests_total = app, state, requests_total

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            try:
                too_big = int(length) > self.state.max_body_bytes
            except ValueError:
                await error_response(400, "Content-Length is not a number")(scope, receive, send)
                return
            if too_big:
                self.requests_total.labels(Request(scope).url.path, "413").inc()
                await error_response(413, f"the request body is {length} bytes; the limit is "
                                          f"{self.state.max_body_bytes} bytes")(scope, receive, send)
                return
        else:
            receive = _limited(receive, self.state.max_body_bytes)

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")  # set by the router on this same scope
                self.requests_total.labels(getattr(route, "path", "other"), str(message["status"])).inc()
            await send(message)
            if message.get("more_body"):
                # One turn of the event loop per streamed chunk (BaseHTTPMiddleware's stream gave several): a
                # body that never waits (the echo backend's) would otherwise hold the loop to its end, and a
                # client that left could not cancel it, so it would be billed as completed. Yielding at most every
                # 0.5 ms instead saved 0.1 ms at 1 client but cost 20 % of the saturated streamed rate: 16 streams
                # then finish in bursts, their ledger rows arrive apart and group-commit less.
                await asyncio.sleep(0)

        await self.app(scope, receive, counted)


def fastapi_telemetry(environ: Mapping[str, str] = os.environ) -> dict[str, bool] | None:
    """FastAPI's own OpenTelemetry spans, metrics and logs: on (its default) when the environment sets up
    OpenTelemetry (any OTEL_* variable, or FASTAPI_OTEL_AUTO_CONFIGURE), off otherwise. Left on, FastAPI asks
    OpenTelemetry for its providers on every request, about 3 % of a request's CPU here, to find none."""
    if any(k.startswith("OTEL_") for k in environ) or "FASTAPI_OTEL_AUTO_CONFIGURE" in environ:
        return None
    return {"tracing": False, "metrics": False, "logs": False}


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        # What exists at start-up (modules, the app, SQLAlchemy's and pydantic's machinery) lives as long as the
        # process; frozen, full collections stop walking it. Unfrozen, each took ~60 ms, more than once a second
        # under load: the server's worst pauses (bench/gateway_overhead.py).
        gc.collect()
        gc.freeze()
        yield
        try:
            await state.gateway.limiter.release()  # rate-limit leases this process did not use
            await state.gateway.ledger.drain()  # rows still queued are committed before the process exits
        finally:
            state.gateway.ledger.close()  # and what the loop could not commit, through the writer thread

    app = FastAPI(title="qwenhost", version="0.1.0", lifespan=lifespan, telemetry=fastapi_telemetry(),
                  description="OpenAI-compatible API for Qwen models on an in-process llama.cpp engine.")
    app.state.qwenhost = state
    requests_total = Counter("qwenhost_http_requests", "HTTP requests by route and status",
                             ["route", "status"], registry=state.registry)
    install_error_handlers(app)

    # Added first, so it runs inside the guard (which counts its responses too).
    app.add_middleware(HotRoutes, fastapi_app=app, router=openai_router, paths=HOT_PATHS)
    app.add_middleware(_GuardAndCount, state=state, requests_total=requests_total)

    @app.get("/health")
    async def health() -> Response:
        if state.backend is None:
            return error_response(503, state.loading_message(), code="model_loading")
        from fastapi.responses import JSONResponse

        return JSONResponse({"status": "ok", "model": state.model_id, **state.backend.load()})

    @app.get("/v1/models", dependencies=[Depends(principal)])
    async def models() -> dict:
        # The name it was started with first (what `qwenhost chat` picks), then the other names it answers to.
        aliases = state.backend.aliases if state.backend else set()
        ids = [state.model_id, *sorted(a for a in aliases if a != state.model_id)]
        now = int(time.time())
        return {"object": "list", "data": [{"id": i, "object": "model", "created": now, "owned_by": "qwenhost"}
                                           for i in ids]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(openai_router)
    app.include_router(admin_router)
    return app
