"""Server-sent events: encoding a chunk, and the response that streams them and cleans up however it ends."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from starlette.types import Receive, Scope, Send

log = logging.getLogger("qwenhost.api")

_MARK = "\x00"  # never left unescaped by json.dumps, so its encoding ("\u0000") is unique in a template
_MARK_JSON = json.dumps(_MARK).encode()


def sse_event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _text(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()


class EventTemplate:
    """The bytes of ``sse_event(obj)`` for objects that differ only in one string, built by concatenation.

    A streamed token is a whole chunk object (id, model, fingerprint, choices, ...) around a few characters;
    encoding only those characters takes json's share of a streamed request's CPU from about a tenth to a
    trace. ``make(value)`` is byte for byte ``sse_event(build(value))``."""

    def __init__(self, build: Callable[[str], dict[str, Any]]) -> None:
        head, sep, tail = sse_event(build(_MARK)).partition(_MARK_JSON)
        if not sep or _MARK_JSON in tail:
            raise ValueError("the template's object must hold the marked string exactly once")
        self.head, self.tail = head, tail

    def make(self, value: str) -> bytes:
        return self.head + _text(value) + self.tail


# How far the body may run ahead of the client: past this, it waits until what it made has been sent. A stream
# of real tokens never gets near it; an instant one (the echo backend, a burst from an upstream) stops here,
# after about a millisecond of work, and lets the loop serve others, and a client that left can cancel it.
READ_AHEAD_BYTES = 16 * 1024
_MIN_CHUNK_COST = 64  # what a chunk counts for at least, so that tiny or empty ones cannot run on unbounded


class EventStream:
    """A text/event-stream response that stops generating when the client leaves, and always cleans up.

    The body runs in a task of its own, and the response sends whatever it has made since the last send in one
    write. Tokens that come one at a time go out one at a time, as before; chunks made at once (an upstream's
    burst, the echo backend) go out together instead of as one ASGI message and one socket write each: a third
    of a streamed request's CPU with 16 clients on an instant backend (docs/benchmarks.md).

    Starlette's StreamingResponse watches for the client leaving with an anyio task group per response, about
    a tenth of a streamed request's CPU on an instant backend. Here one plain task waits for the disconnect and
    cancels the sending task, only while it is still sending, so a cancel never lands in the clean-up.
    ``cleanup`` runs once the stream ends, whether it finished, the client left, or the server cancelled it:
    it bills what was generated and stops the backend (the body generator may never have started)."""

    def __init__(self, body: AsyncGenerator[bytes, None], cleanup: Callable[[], Awaitable[None]],
                 headers: dict[str, str] | None = None) -> None:
        self.body, self.cleanup = body, cleanup
        self.status_code = 200
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        self.raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"sending": True, "left": False}

        async def watch() -> None:
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass
            except Exception:  # a receive that fails tells nothing about the client: stop watching
                return
            state["left"] = True
            if state["sending"]:  # suspended at an await inside the try below: the cancel lands there
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        made = _Made()
        producer: asyncio.Task[None] | None = None
        body_error_raised = False
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            producer = asyncio.ensure_future(made.fill(self.body))
            while True:
                chunk = await made.take()
                if chunk is None:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            body_error_raised = True
            await producer  # the body's own error, if it ended with one (it has ended: this does not wait)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # A server cancel in the same turn as the client's leaving is a second request: it still stops us.
            if not state["left"] or task.uncancel() > 0:
                raise
        finally:
            state["sending"] = False
            watcher.cancel()
            cancelled_again = False
            if producer is not None:
                producer.cancel()  # lands where the body waits (a token, a commit); its own finally runs
                while not producer.done():  # a cancel meanwhile waits until the body has stopped
                    try:
                        await asyncio.wait([producer])
                    except asyncio.CancelledError:
                        cancelled_again = True
                if not producer.cancelled() and (exc := producer.exception()) is not None and not body_error_raised:
                    log.warning("a streamed response's body failed after the response ended: %r", exc)
            await self.body.aclose()
            await self.cleanup()
            if cancelled_again:
                raise asyncio.CancelledError


class _Made:
    """The chunks a body has made and the response has not sent yet: one producer, one consumer."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.ended = False
        self.ready = asyncio.Event()  # chunks to send, or the end
        self.room = asyncio.Event()  # under READ_AHEAD_BYTES
        self.room.set()

    async def fill(self, body: AsyncGenerator[bytes, None]) -> None:
        try:
            async for chunk in body:
                self.chunks.append(chunk)
                self.size += max(len(chunk), _MIN_CHUNK_COST)
                self.ready.set()
                if self.size >= READ_AHEAD_BYTES:
                    self.room.clear()
                    await self.room.wait()
        finally:
            self.ended = True
            self.ready.set()

    async def take(self) -> bytes | None:
        """Everything made since the last call, in one piece; None once the body has ended and all was taken."""
        while not self.chunks:
            if self.ended:
                return None
            self.ready.clear()
            await self.ready.wait()
        out = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        self.size = 0
        self.room.set()
        return out
