"""Streaming client for /v1/chat/completions that timestamps every content chunk.

One OS thread per in-flight request over one shared httpx connection pool: a thread sleeps in
``recv`` between chunks, so at 16 streams of a few tokens a second each the client costs next to
nothing, and each timestamp is taken as soon as the line is read.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from qwenhost.bench.stats import RequestRecord

Message = dict[str, str]


class ChatClient:
    """Sends greedy, EOS-ignoring streamed chat requests to one server."""

    def __init__(self, base_url: str, model: str | None = None, timeout_s: float = 3600,
                 count_tokens: Callable[[str], int] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        # Tokens in a chunk's text; the runner uses it after a workload, never while streams are timed.
        self.count_tokens = count_tokens
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10),
                                  limits=httpx.Limits(max_connections=128, max_keepalive_connections=128))
        self.model = model or self.served_model()

    def served_model(self) -> str:
        """The first model id the server lists (each server names the same file its own way)."""
        r = self._http.get(self.base_url + "/v1/models")
        r.raise_for_status()
        return str(r.json()["data"][0]["id"])

    def body(self, messages: Sequence[Message], max_tokens: int) -> dict[str, Any]:
        return {"model": self.model, "messages": list(messages), "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}

    def stream(self, messages: Sequence[Message], max_tokens: int,
               on_chunk: Callable[[int], None] | None = None) -> RequestRecord:
        """One request; ``on_chunk(n)`` is called after the n-th content chunk arrives (n from 1).
        Failures are recorded in ``error`` rather than raised, so one bad request does not end a run."""
        rec = RequestRecord(send=time.perf_counter(), max_tokens=max_tokens)
        try:
            with self._http.stream("POST", self.base_url + "/v1/chat/completions",
                                   json=self.body(messages, max_tokens)) as r:
                if r.status_code != 200:
                    rec.error = f"HTTP {r.status_code}: {r.read().decode(errors='replace')[:500]}"
                    return rec
                for line in r.iter_lines():
                    now = time.perf_counter()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    obj = json.loads(data)
                    if obj.get("error"):
                        rec.error = f"stream error: {json.dumps(obj['error'])[:500]}"
                        break
                    if obj.get("usage"):
                        rec.completion_tokens = int(obj["usage"].get("completion_tokens") or 0)
                        rec.prompt_tokens = obj["usage"].get("prompt_tokens")
                        details = obj["usage"].get("prompt_tokens_details") or {}
                        if details.get("cached_tokens") is not None:
                            rec.cached_tokens = int(details["cached_tokens"])
                    for choice in obj.get("choices") or []:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            rec.chunks.append(now)
                            rec.pieces.append(content)
                            if on_chunk is not None:
                                on_chunk(len(rec.chunks))
        except (httpx.HTTPError, json.JSONDecodeError, ValueError) as exc:
            rec.error = f"{type(exc).__name__}: {exc}"
        if rec.error is None and rec.completion_tokens == 0:
            rec.error = "no usage.completion_tokens in the stream"
        return rec

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_parallel(jobs: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run each job on its own thread, released together by a barrier; results in job order."""
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
