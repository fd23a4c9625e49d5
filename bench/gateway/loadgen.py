"""The load generator of bench/gateway_overhead.py: raw asyncio + llhttp (httptools) on uvloop, in a child
process of its own (`gateway_overhead.py --loadgen SPEC`) pinned to LOADGEN_CORE; httpx costs more CPU per
request than the servers under test."""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import time
from typing import Any, cast

SERVER_CORE, LOADGEN_CORE = 0, 1
PROMPT = "Benchmark the gateway and say these eighteen words back to me one at a time please thank you"


class _Conn(asyncio.Protocol):
    """One keep-alive connection; llhttp frames the responses (Content-Length or chunked)."""

    def __init__(self, keep_first_body: bool) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, int, bytes]] | None = None
        self.size = 0
        self.tail = b""
        self.first_body: bytearray | None = bytearray() if keep_first_body else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        # Only the end matters (is `data: [DONE]` there?); keeping the whole body would cost the client CPU.
        self.tail = (self.tail + body)[-48:]
        if self.first_body is not None:
            self.first_body += body

    def on_message_complete(self) -> None:
        result = (self.parser.get_status_code(), self.size, self.tail)
        self.size, self.tail = 0, b""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(result)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))


def _check_first(body: bytes, stream: bool) -> str | None:
    """Whether a full response says what the echo says: PROMPT back (None) or what is wrong."""
    try:
        if stream:
            events = [ln[6:] for ln in body.decode().split("\n") if ln.startswith("data: ")]
            if events[-1] != "[DONE]":
                return "the stream does not end with data: [DONE]"
            text = "".join((json.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                           for e in events[:-1])
        else:
            text = json.loads(body)["choices"][0]["message"]["content"]
    except Exception as exc:
        return f"unreadable response ({exc!r}): {body[:300]!r}"
    return None if text == PROMPT else f"the reply is {text!r}, not the prompt"


async def _loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    body = json.dumps({"model": spec["model"], "messages": [{"role": "user", "content": PROMPT}],
                       **({"stream": True} if spec["stream"] else {})}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{spec['port']}\r\n"
            f"Authorization: Bearer {spec['key']}\r\nContent-Type: application/json\r\n"
            f"Accept: {'text/event-stream' if spec['stream'] else 'application/json'}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    request = head + body
    conns: list[_Conn] = []
    for i in range(spec["concurrency"]):
        _, proto = await loop.create_connection(lambda i=i: _Conn(keep_first_body=i == 0), "127.0.0.1",
                                                spec["port"])
        conns.append(proto)
    t_start = time.perf_counter()
    measure_from = t_start + spec["warmup"]
    stop_at = measure_from + spec["duration"]
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0, "in_window": 0}
    problems: list[str] = []

    rate = spec.get("rate")

    async def worker(conn: _Conn, seed: int) -> None:
        assert conn.transport is not None
        rng = random.Random(seed)
        # Paced: each client sends at Poisson times (rate/N per client). A request due while its connection is
        # still busy waits, and that wait counts in its latency (no coordinated omission); a request sent late
        # because the event loop's timer is coarse (uvloop: 1 ms) is timed from when it was actually sent.
        due = t_start + rng.expovariate(rate / len(conns)) if rate else 0.0
        free_since = t_start
        while True:
            if rate:
                if due >= stop_at:
                    return
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                t0 = due if free_since > due else time.perf_counter()
            else:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
            conn.waiter = loop.create_future()
            conn.transport.write(request)
            try:
                status, size, tail = await conn.waiter
            except ConnectionError as exc:
                counts["errors"] += 1
                problems.append(str(exc))
                return
            t1 = free_since = time.perf_counter()
            started = due if rate else t0
            if rate:
                due += rng.expovariate(rate / len(conns))
            ok = status == 200 and size > 0 and (not spec["stream"] or b"data: [DONE]" in tail)
            if conn.first_body is not None:
                why = _check_first(bytes(conn.first_body), spec["stream"]) if ok else f"HTTP {status}"
                if why is not None:
                    problems.append(why + ": " + bytes(conn.first_body[:300]).decode(errors="replace"))
                conn.first_body = None
            if not ok:
                counts["errors"] += 1
                if len(problems) < 5:
                    problems.append(f"HTTP {status}: {tail!r}")
                continue
            counts["ok"] += 1
            if started >= measure_from:
                latencies.append(t1 - t0)
            if measure_from <= t1 < stop_at:
                counts["in_window"] += 1

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(worker(c, i) for i, c in enumerate(conns)))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - t_start
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    latencies.sort()

    def q(p: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else None

    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"ok": counts["ok"], "errors": counts["errors"], "samples": len(latencies),
            "rps": counts["in_window"] / spec["duration"], "p50_ms": q(0.50), "p90_ms": q(0.90),
            "p99_ms": q(0.99), "max_ms": latencies[-1] * 1000 if latencies else None,
            "mean_ms": sum(latencies) / len(latencies) * 1000 if latencies else None,
            "loadgen_cpu_pct": 100 * cpu / wall, "wall_s": wall, "problems": problems[:5]}


def loadgen_main(spec_json: str) -> None:
    """The child process: pinned to its own core, so it never competes with the server for CPU."""
    os.sched_setaffinity(0, {LOADGEN_CORE})
    spec = json.loads(spec_json)
    try:
        import uvloop

        result = uvloop.run(_loadgen(spec))
    except ImportError:
        result = asyncio.run(_loadgen(spec))
    print(json.dumps(result))
