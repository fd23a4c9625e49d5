"""Runs one workload against one running server and turns its timelines into metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from qwenhost.bench import stats
from qwenhost.bench.client import ChatClient, Message, run_parallel
from qwenhost.bench.stats import RequestRecord
from qwenhost.bench.workloads import ChatPlan, InterferencePlan, Request

Metrics = dict[str, Any]


def annotate(recs: list[RequestRecord], count: Callable[[str], int] | None) -> None:
    """Tokens per chunk from the chunk's text (see ``stats``); done once the workload is over, so the
    tokenizer's CPU time never overlaps the streams being measured."""
    if count is None:
        return
    for r in recs:
        r.chunk_tokens = [max(1, count(p)) for p in r.pieces]


def _common(recs: list[RequestRecord]) -> Metrics:
    failed = [r.error for r in recs if r.error]
    return {"requests": len(recs), "failed": len(failed), "first_error": failed[0] if failed else None,
            "completion_tokens": sum(r.completion_tokens for r in recs),
            "computed_prompt_tokens": stats.computed_prompt_tokens(recs),
            "all_tokens_generated": all(r.error is None and r.completion_tokens == r.max_tokens for r in recs)}


def run_single(client: ChatClient, req: Request) -> tuple[Metrics, list[RequestRecord]]:
    rec = client.stream(req.messages, req.max_tokens)
    annotate([rec], client.count_tokens)
    return {**_common([rec]), "decode_tok_s": stats.decode_rate(rec), "ttft_s": rec.ttft,
            "aggregate_tok_s": stats.aggregate_rate([rec])}, [rec]


def run_streams(client: ChatClient, reqs: list[Request]) -> tuple[Metrics, list[RequestRecord]]:
    recs: list[RequestRecord] = run_parallel([lambda r=r: client.stream(r.messages, r.max_tokens) for r in reqs])
    annotate(recs, client.count_tokens)
    steady = stats.steady_state_decode(recs)
    ok = [r for r in recs if r.error is None and r.chunks]
    return {**_common(recs), "streams": len(reqs),
            "aggregate_tok_s": stats.aggregate_rate(recs),
            "wall_s": max(r.chunks[-1] for r in ok) - min(r.send for r in ok) if ok else None,
            "ttft_p50_s": stats.percentile(stats.ttfts(recs), 50),
            "steady_decode_tok_s": steady.tok_s if steady else None,
            "steady_interval_s": steady.end - steady.start if steady else None}, recs


def run_chat(client: ChatClient, plan: ChatPlan) -> tuple[Metrics, list[list[RequestRecord]]]:
    """Every user starts at once; each sends its next turn when its previous reply is complete,
    with the whole history (system, earlier turns and the server's own replies) resent."""

    def user(turns: list[str]) -> list[RequestRecord]:
        history: list[Message] = [{"role": "system", "content": plan.system}]
        recs = []
        for text in turns:
            history.append({"role": "user", "content": text})
            rec = client.stream(history, plan.max_tokens)
            recs.append(rec)
            if rec.error:
                break
            history.append({"role": "assistant", "content": rec.text})
        return recs

    per_user: list[list[RequestRecord]] = run_parallel([lambda t=t: user(t) for t in plan.turns])
    flat = [r for recs in per_user for r in recs]
    annotate(flat, client.count_tokens)
    ok = [r for r in flat if r.error is None and r.chunks]
    expected = sum(len(t) for t in plan.turns)
    return {**_common(flat), "users": len(plan.turns), "turns": len(plan.turns[0]),
            "all_turns_done": len(ok) == expected,
            "total_s": max(r.chunks[-1] for r in ok) - min(r.send for r in flat) if ok else None,
            "turn0_ttft_p50_s": stats.percentile(stats.ttfts([u[0] for u in per_user if u]), 50),
            "ttft_p50_s": stats.percentile(stats.ttfts(flat), 50),
            "later_ttft_p50_s": stats.percentile(stats.ttfts([r for u in per_user for r in u[1:]]), 50),
            "cached_share": stats.cached_share(flat)}, per_user


def run_interference(client: ChatClient, plan: InterferencePlan) -> tuple[Metrics, dict[str, Any]]:
    """The streams start together; a watcher sends the long prompt once every stream has
    ``trigger_chunks`` chunks (or has ended, so a failed stream cannot hang the run)."""
    counts = [0] * len(plan.streams)
    ended = [False] * len(plan.streams)
    ready = threading.Event()
    lock = threading.Lock()

    def check() -> None:
        if all(e or c >= plan.trigger_chunks for c, e in zip(counts, ended, strict=True)):
            ready.set()

    def on_chunk(i: int) -> Callable[[int], None]:
        def note(n: int) -> None:
            with lock:
                counts[i] = n
                check()
        return note

    def stream(i: int) -> RequestRecord:
        try:
            req = plan.streams[i]
            return client.stream(req.messages, req.max_tokens, on_chunk(i))
        finally:
            with lock:
                ended[i] = True
                check()

    def long() -> RequestRecord:
        ready.wait()
        return client.stream(plan.long.messages, plan.long.max_tokens)

    jobs: list[Callable[[], RequestRecord]] = [lambda i=i: stream(i) for i in range(len(plan.streams))]
    *recs, long_rec = run_parallel([*jobs, long])
    annotate([*recs, long_rec], client.count_tokens)
    return {**_common([*recs, long_rec]), "streams": len(recs), **stats.interference(recs, long_rec)}, \
        {"streams": recs, "long": long_rec}


def warm_up(client: ChatClient) -> None:
    """A tiny request first, so one-time costs (pages of the model file, first allocations) stay out of
    the measured run on both servers alike."""
    rec = client.stream([{"role": "user", "content": "Say hello."}], 4)
    if rec.error:
        raise RuntimeError(f"warm-up request failed: {rec.error}")
