"""An instant OpenAI-compatible upstream: the floor that bench/gateway_overhead.py subtracts from qwenhost's
latency, and the upstream LiteLLM's proxy is put in front of.

    .venv/bin/python bench/upstream_instant.py --port 8700

POST /v1/chat/completions answers at once with what `qwenhost serve --model echo` answers: the last user
message back, as one chat.completion JSON, or (with "stream": true) as server-sent events, one chunk per word
(a role chunk first, a finish chunk, [DONE]). GET /v1/models lists the one model. Nothing else.

It is raw asyncio with llhttp (httptools) and no framework, so that what it costs per request is close to the
cost of the HTTP exchange itself: latency measured through it is "the network and the client", and whatever a
gateway adds on top of it is the gateway's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time
from typing import Any, cast

import httptools

MODEL = "echo"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _last_user_text(body: dict[str, Any]) -> tuple[str, int]:
    """The last user message's text and the prompt's word count (the echo backend's token counts)."""
    texts: list[str] = []
    last_user = ""
    for m in body.get("messages") or []:
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones, as qwenhost does
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        text = content if isinstance(content, str) else ""
        texts.append(text)
        if m.get("role") == "user":
            last_user = text
    return last_user, sum(len(t.split()) for t in texts)


def _completion(body: dict[str, Any]) -> bytes:
    reply, prompt_words = _last_user_text(body)
    words = reply.split() or ["(empty)"]
    return _dumps({
        "id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model", MODEL), "system_fingerprint": "fp_upstream",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": prompt_words, "completion_tokens": len(words),
                  "total_tokens": prompt_words + len(words), "prompt_tokens_details": {"cached_tokens": 0}},
    })


def _events(body: dict[str, Any]) -> list[bytes]:
    reply, prompt_words = _last_user_text(body)
    words = reply.split() or ["(empty)"]
    base = {"id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion.chunk",
            "created": int(time.time()), "model": body.get("model", MODEL), "system_fingerprint": "fp_upstream"}
    opts = body.get("stream_options") or {}
    include_usage = bool(opts.get("include_usage")) if isinstance(opts, dict) else False

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj: dict[str, Any] = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                                   "logprobs": None}]}
        if include_usage:
            obj["usage"] = None
        return b"data: " + _dumps(obj) + b"\n\n"

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
    out.append(chunk({}, "stop"))
    if include_usage:
        usage = {"prompt_tokens": prompt_words, "completion_tokens": len(words),
                 "total_tokens": prompt_words + len(words)}
        out.append(b"data: " + _dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def _head(status: bytes, ctype: bytes, length: int | None, keep_alive: bool) -> bytes:
    framing = b"transfer-encoding: chunked\r\n" if length is None else b"content-length: %d\r\n" % length
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: " + ctype + b"\r\n" + framing
            + (b"" if keep_alive else b"connection: close\r\n") + b"\r\n")


class Upstream(asyncio.Protocol):
    """One client connection; llhttp parses pipelined/keep-alive requests, we answer each in turn."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(b"400 Bad Request", b"application/json", _dumps({"error": {"message": "bad request"}}),
                       keep_alive=False)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        url, raw = self.url.split(b"?", 1)[0], b"".join(self.body)
        self.url, self.body = b"", []
        keep_alive = self.parser.should_keep_alive()
        method = self.parser.get_method()
        if method == b"GET" and url == b"/v1/models":
            listing = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                                   "owned_by": "upstream"}]}
            self._send(b"200 OK", b"application/json", _dumps(listing), keep_alive)
            return
        if method != b"POST" or url != b"/v1/chat/completions":
            self._send(b"404 Not Found", b"application/json", _dumps({"error": {"message": "not found"}}),
                       keep_alive)
            return
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            self._send(b"400 Bad Request", b"application/json",
                       _dumps({"error": {"message": "the body must be a JSON object"}}), keep_alive)
            return
        if body.get("stream"):
            self._stream(_events(body), keep_alive)
        else:
            self._send(b"200 OK", b"application/json", _completion(body), keep_alive)

    def _send(self, status: bytes, ctype: bytes, payload: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        self.transport.write(_head(status, ctype, len(payload), keep_alive) + payload)
        if not keep_alive:
            self.transport.close()

    def _stream(self, events: list[bytes], keep_alive: bool) -> None:
        assert self.transport is not None
        # One write per event, as a server streaming tokens does (and as uvicorn does per yielded chunk).
        self.transport.write(_head(b"200 OK", b"text/event-stream", None, keep_alive))
        for ev in events:
            self.transport.write(b"%x\r\n" % len(ev) + ev + b"\r\n")
        self.transport.write(b"0\r\n\r\n")
        if not keep_alive:
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, host, port, backlog=1024)
    print(f"instant upstream on http://{host}:{port}/v1 (pid {os.getpid()})", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8700)
    args = ap.parse_args()
    try:
        import uvloop
    except ImportError:  # plain asyncio works, a little slower; uvicorn would use uvloop too when present
        uvloop = None
    try:
        if uvloop is not None:
            uvloop.run(serve(args.host, args.port))
        else:
            asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
