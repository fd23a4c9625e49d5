"""POST /v1/chat/completions and /v1/completions: JSON or server-sent events in OpenAI's shapes."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from qwenhost.api.metering import Meter, gateway_of, principal
from qwenhost.api.sse import EventStream, EventTemplate, sse_event
from qwenhost.api.state import ServerState
from qwenhost.gateway.keys import Principal
from qwenhost.router.backend import Backend
from qwenhost.router.local import Delta, Finish, Prepared, RequestError
from qwenhost.router.openai_types import ChatCompletionRequest, CompletionRequest

router = APIRouter()


def _backend(request: Request, model: str) -> Backend:
    """The backend serving ``model`` (404 if none, 503 while loading)."""
    state: ServerState = request.app.state.qwenhost
    backend = state.backend
    if backend is None:
        raise RequestError(503, state.loading_message(), err_type="service_unavailable", code="model_loading",
                           retry_after=5)
    if not backend.serves(model):
        raise RequestError(404, f"model {model!r} is not served here; GET /v1/models lists "
                                f"{sorted(backend.aliases)}", param="model", code="model_not_found",
                           err_type="not_found_error")
    return backend


def _usage(f: Finish) -> dict[str, Any]:
    return {"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
            "total_tokens": f.prompt_tokens + f.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": f.cached_tokens}}


async def _first_and_rest(agen: AsyncIterator[Delta | Finish]) -> tuple[Delta | Finish, AsyncIterator]:
    """Pull the first event before answering, so queue-full and other early errors get their status code."""
    first = await agen.__anext__()
    return first, agen


def _stream(body: AsyncGenerator[bytes, None], meter: Meter, agen: AsyncIterator[Delta | Finish],
            headers: dict[str, str] | None = None) -> EventStream:
    """The event stream of one request, billed however it ends: when the client leaves, the body generator
    is left suspended (or never started), so its own ``finally`` cannot be what bills it."""
    async def cleanup() -> None:
        meter.abandoned("disconnected")  # for a body that never started; else a no-op
        with contextlib.suppress(Exception):
            await agen.aclose()  # type: ignore[attr-defined]

    return EventStream(body, cleanup, headers)


async def _watch_disconnect(request: Request, task: asyncio.Task) -> None:
    while not task.done():
        if await request.is_disconnected():
            task.cancel()
            return
        await asyncio.sleep(0.25)


async def _admit(request: Request, who: Principal, backend: Backend, prep: Prepared, rid: str,
                 model: str) -> Meter:
    gw = gateway_of(request)
    await gw.admit(who)
    names = [model, *sorted(backend.aliases)]
    return Meter(gw, who, gw.start(rid, model, backend.kind, price_names=names), prep)


async def _collect(request: Request, agen: AsyncIterator[Delta | Finish], meter: Meter) -> tuple[list[Delta], Finish]:
    async def run() -> tuple[list[Delta], Finish]:
        deltas: list[Delta] = []
        async for ev in agen:
            if isinstance(ev, Finish):
                return deltas, ev
            deltas.append(ev)
        raise RequestError(500, "generation ended without a finish", err_type="server_error")

    task = asyncio.ensure_future(run())
    watcher = asyncio.ensure_future(_watch_disconnect(request, task))
    try:
        deltas, fin = await task
        await meter.completed(fin)
        return deltas, fin
    except asyncio.CancelledError:
        meter.abandoned("disconnected")
        raise
    except BaseException:
        meter.abandoned("failed")
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(Exception):
            await agen.aclose()


def _message(deltas: list[Delta]) -> dict[str, Any]:
    content = "".join(d.content for d in deltas if d.content)
    reasoning = "".join(d.reasoning for d in deltas if d.reasoning)
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        if d.tool_call is None:
            continue
        tc = d.tool_call
        c = calls.setdefault(tc["index"], {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if tc.get("id"):
            c["id"] = tc["id"]
            c["function"]["name"] = tc["function"]["name"]
        c["function"]["arguments"] += tc["function"].get("arguments", "")
    msg: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
    if reasoning:
        msg["reasoning_content"] = reasoning
    if calls:
        msg["tool_calls"] = [calls[i] for i in sorted(calls)]
    return msg


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           who: Principal = Depends(principal)) -> Any:
    state: ServerState = request.app.state.qwenhost
    backend = _backend(request, body.model)
    prep = backend.prepare_chat(body)
    rid = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())
    meter = await _admit(request, who, backend, prep, rid, body.model)
    first, agen = await _first_and_rest(backend.stream(prep))
    if body.stream:
        return _stream(_chat_sse(rid, created, body, state, first, agen, meter), meter, agen,
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    deltas, fin = await _collect(request, _prepend(first, agen), meter)
    return JSONResponse({
        "id": rid, "object": "chat.completion", "created": created, "model": body.model,
        "system_fingerprint": state.fingerprint,
        "choices": [{"index": 0, "message": _message(deltas), "finish_reason": fin.reason, "logprobs": None}],
        "usage": _usage(fin),
    })


async def _prepend(first: Delta | Finish, agen: AsyncIterator[Delta | Finish]) -> AsyncIterator[Delta | Finish]:
    yield first
    async for ev in agen:
        yield ev


async def _chat_sse(rid: str, created: int, body: ChatCompletionRequest, state: ServerState,
                    first: Delta | Finish, agen: AsyncIterator[Delta | Finish],
                    meter: Meter) -> AsyncGenerator[bytes, None]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model,
            "system_fingerprint": state.fingerprint}

    def obj(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        o = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if include_usage:
            o["usage"] = None
        return o

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse_event(obj(delta, finish))

    content = EventTemplate(lambda text: obj({"content": text}))
    reasoning = EventTemplate(lambda text: obj({"reasoning_content": text}))

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for ev in _prepend(first, agen):
            if isinstance(ev, Finish):
                await meter.completed(ev)  # on disk before the client sees the end of the stream
                yield chunk({}, ev.reason)
                if include_usage:
                    yield sse_event({**base, "choices": [], "usage": _usage(ev)})
                break
            if ev.reasoning:
                yield reasoning.make(ev.reasoning)
            if ev.content:
                yield content.make(ev.content)
            if ev.tool_call:
                yield chunk({"tool_calls": [ev.tool_call]})
        yield b"data: [DONE]\n\n"
    except RequestError as exc:
        meter.abandoned("failed")
        yield sse_event({"error": {"message": exc.message, "type": exc.err_type, "param": exc.param, "code": exc.code}})
    finally:
        meter.abandoned("disconnected")  # no-op when already billed
        with contextlib.suppress(Exception):
            await agen.aclose()


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, who: Principal = Depends(principal)) -> Any:
    state: ServerState = request.app.state.qwenhost
    backend = _backend(request, body.model)
    prep: Prepared = backend.prepare_completion(body)
    rid = "cmpl-" + secrets.token_hex(12)
    created = int(time.time())
    meter = await _admit(request, who, backend, prep, rid, body.model)
    first, agen = await _first_and_rest(backend.stream(prep))
    base = {"id": rid, "object": "text_completion", "created": created, "model": body.model,
            "system_fingerprint": state.fingerprint}
    echo = prep.prompt_text if body.echo else ""
    if body.stream:
        text_event = EventTemplate(lambda t: {**base, "choices": [{"index": 0, "text": t, "finish_reason": None}]})

        async def sse() -> AsyncGenerator[bytes, None]:
            try:
                if echo:
                    yield sse_event({**base, "choices": [{"index": 0, "text": echo, "finish_reason": None}]})
                async for ev in _prepend(first, agen):
                    if isinstance(ev, Finish):
                        await meter.completed(ev)
                        yield sse_event({**base, "choices": [{"index": 0, "text": "", "finish_reason": ev.reason}]})
                        if body.stream_options and body.stream_options.include_usage:
                            yield sse_event({**base, "choices": [], "usage": _usage(ev)})
                        break
                    if ev.content:
                        yield text_event.make(ev.content)
                yield b"data: [DONE]\n\n"
            except RequestError as exc:
                meter.abandoned("failed")
                yield sse_event({"error": {"message": exc.message, "type": exc.err_type, "param": exc.param,
                                           "code": exc.code}})
            finally:
                meter.abandoned("disconnected")
                with contextlib.suppress(Exception):
                    await agen.aclose()
        return _stream(sse(), meter, agen)
    deltas, fin = await _collect(request, _prepend(first, agen), meter)
    text = echo + "".join(d.content or "" for d in deltas)
    return JSONResponse({**base, "choices": [{"index": 0, "text": text, "finish_reason": fin.reason,
                                              "logprobs": None}], "usage": _usage(fin)})
