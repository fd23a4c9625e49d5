"""The completion routes' happy path without FastAPI's per-request routing and dependency machinery.

A chat completion through FastAPI passes the router (every route's pattern is tried in order), dependency
solving, body validation through FastAPI's field wrappers and three send wrappers per chunk: about a third of
the gateway's CPU per request on an instant backend (bench/gateway_overhead.py, py-spy). `HotRoutes` serves
POST /v1/chat/completions and /v1/completions itself when the body is well-formed JSON that validates: the same
endpoint functions, the same `principal` and the same exception handlers, called directly. Anything else
(another route or method, a non-JSON content type, invalid JSON, a body that fails validation) goes to FastAPI
with the body replayed, so every error message stays FastAPI's and is written in one place."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwenhost.api.metering import principal

Endpoint = Callable[..., Awaitable[Response]]
HOT_PATHS = ("/v1/chat/completions", "/v1/completions")


def is_json_body(scope: Scope) -> bool:
    """FastAPI reads a body as JSON when there is no content type or it is application/json or +json."""
    ctype = next((v for k, v in scope["headers"] if k == b"content-type"), None)
    if ctype is None:
        return True
    main = ctype.split(b";", 1)[0].strip().lower()
    return main == b"application/json" or (main.startswith(b"application/") and main.endswith(b"+json"))


class HotRoutes:
    """ASGI middleware, inside the request counter and body-size guard, outside FastAPI's routing."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, router: APIRouter, paths: tuple[str, ...]) -> None:
        self.app, self.fastapi_app, self.router, self.paths = app, fastapi_app, router, paths
        self._routes: dict[str, tuple[APIRoute, type[BaseModel], Endpoint]] | None = None

    def _hot(self) -> dict[str, tuple[APIRoute, type[BaseModel], Endpoint]]:
        # Built on the first request: routes are registered after the middleware is added.
        if self._routes is None:
            routes = {}
            for r in self.router.routes:
                if isinstance(r, APIRoute) and r.path in self.paths and "POST" in r.methods:
                    model = r.body_field.field_info.annotation if r.body_field else None
                    if isinstance(model, type) and issubclass(model, BaseModel):
                        routes[r.path] = (r, model, r.endpoint)
            self._routes = routes
        return self._routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        direct = scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path")
        hot = self._hot().get(scope["path"]) if direct else None  # behind a root path: FastAPI's routing
        if hot is None:
            await self.app(scope, receive, send)
            return
        route, model, endpoint = hot
        chunks: list[bytes] = []
        while True:
            try:
                message = await receive()
            except HTTPException as exc:  # a chunked body over the limit (app.py's BodyTooLarge, a 413)
                await (await self._handle(Request(scope, receive), exc))(scope, receive, send)
                return
            if message["type"] != "http.request":  # the client left while sending its body
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        replay = _replay([{"type": "http.request", "body": raw, "more_body": False}], receive)
        body = _parse(scope, raw, model)
        if body is None:
            await self.app(scope, replay, send)
            return
        scope["route"], scope["endpoint"], scope["path_params"] = route, endpoint, {}
        request = Request(scope, replay)
        try:
            response = await endpoint(body, request, await principal(request))
        except Exception as exc:
            response = await self._handle(request, exc)
        await response(scope, replay, send)

    async def _handle(self, request: Request, exc: Exception) -> Response:
        handlers = self.fastapi_app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return await handlers[cls](request, exc)
        raise exc


def _parse(scope: Scope, raw: bytes, model: type[BaseModel]) -> BaseModel | None:
    """The validated body, or None for FastAPI to answer (with its own error for what is wrong)."""
    if not is_json_body(scope):
        return None
    try:
        return model.model_validate(json.loads(raw))
    except Exception:  # invalid JSON or UTF-8, a failing body, JSON nested too deeply: FastAPI says what
        return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives the already-read messages first, then the connection's own (disconnects)."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
