"""The FastAPI app: OpenAI-compatible routes, health, models, Prometheus metrics, and guards on input."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from qwenhost.api.errors import error_response, install_error_handlers
from qwenhost.api.routes_openai import router as openai_router
from qwenhost.api.state import ServerState


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="qwenhost", version="0.1.0",
                  description="OpenAI-compatible API for Qwen models on an in-process llama.cpp engine.")
    app.state.qwenhost = state
    requests_total = Counter("qwenhost_http_requests", "HTTP requests by route and status",
                             ["route", "status"], registry=state.registry)
    install_error_handlers(app)

    @app.middleware("http")
    async def guard_and_count(request: Request, call_next):  # type: ignore[no-untyped-def]
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > state.max_body_bytes
            except ValueError:
                return error_response(400, "Content-Length is not a number")
            if too_big:
                requests_total.labels(request.url.path, "413").inc()
                return error_response(413, f"the request body is {length} bytes; the limit is "
                                           f"{state.max_body_bytes} bytes")
        response = await call_next(request)
        route = request.scope.get("route")
        requests_total.labels(getattr(route, "path", "other"), str(response.status_code)).inc()
        return response

    @app.get("/health")
    async def health() -> Response:
        if state.backend is None:
            return error_response(503, state.loading_message(), code="model_loading")
        from fastapi.responses import JSONResponse

        eng = state.backend.engine
        return JSONResponse({"status": "ok", "model": state.model_id,
                             "running": len(eng.scheduler.running), "waiting": len(eng.scheduler.waiting)})

    @app.get("/v1/models")
    async def models() -> dict:
        ids = sorted(state.backend.aliases) if state.backend else [state.model_id]
        now = int(time.time())
        return {"object": "list", "data": [{"id": i, "object": "model", "created": now, "owned_by": "qwenhost"}
                                           for i in ids]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(openai_router)
    return app
