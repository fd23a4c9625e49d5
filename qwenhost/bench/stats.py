"""Pure functions from request timelines to the bench's metrics (no I/O, no clocks).

A timeline is one streamed request: when it was sent, when each content chunk arrived, and how many
tokens ``usage`` says were generated. Servers send a chunk per token except where a token's text is not
complete UTF-8 on its own: an emoji is often three byte tokens and arrives as one chunk after three decode
steps. ``chunk_tokens`` (the tokenizer's count of each chunk's text, when the client has a tokenizer) says
how many tokens a chunk carries; token counts in a window are those weights scaled so a request's total
equals ``usage``, and inter-token latency divides a chunk's gap among its tokens, so a three-token emoji
is three decode steps, not one pause three steps long.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    """One streamed request as the client saw it (times from one monotonic clock, in seconds)."""

    send: float
    chunks: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens the server reused from its cache (when it says)
    max_tokens: int = 0
    pieces: list[str] = field(default_factory=list)  # each chunk's text
    chunk_tokens: list[int] | None = None  # tokens each chunk carries (estimated from its text)
    error: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def first(self) -> float | None:
        return self.chunks[0] if self.chunks else None

    @property
    def last(self) -> float | None:
        return self.chunks[-1] if self.chunks else None

    @property
    def ttft(self) -> float | None:
        return None if not self.chunks else self.chunks[0] - self.send


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default); None when empty."""
    xs = sorted(values)
    if not xs:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def decode_rate(rec: RequestRecord) -> float | None:
    """(tokens - 1) / (last token - first token): the first token belongs to prefill, not decode."""
    if len(rec.chunks) < 2 or rec.completion_tokens < 2 or rec.chunks[-1] <= rec.chunks[0]:
        return None
    return (rec.completion_tokens - 1) / (rec.chunks[-1] - rec.chunks[0])


def _ok(recs: Sequence[RequestRecord]) -> list[RequestRecord]:
    return [r for r in recs if r.error is None and r.chunks]


def aggregate_rate(recs: Sequence[RequestRecord]) -> float | None:
    """All completion tokens / (last token of any request - first request sent)."""
    ok = _ok(recs)
    if not ok:
        return None
    wall = max(r.chunks[-1] for r in ok) - min(r.send for r in ok)
    return sum(r.completion_tokens for r in ok) / wall if wall > 0 else None


def ttfts(recs: Sequence[RequestRecord]) -> list[float]:
    return [r.chunks[0] - r.send for r in _ok(recs)]


def computed_prompt_tokens(recs: Sequence[RequestRecord]) -> int | None:
    """Prompt tokens the server had to compute (its prompt tokens less those it reused from cache);
    None unless every successful request reported both."""
    ok = _ok(recs)
    if not ok or any(r.prompt_tokens is None or r.cached_tokens is None for r in ok):
        return None
    return sum((r.prompt_tokens or 0) - (r.cached_tokens or 0) for r in ok)


def cached_share(recs: Sequence[RequestRecord]) -> float | None:
    """Share of prompt tokens the server says it reused from its cache; None when it reports none."""
    told = [r for r in _ok(recs) if r.cached_tokens is not None and r.prompt_tokens]
    if not told:
        return None
    return sum(r.cached_tokens or 0 for r in told) / sum(r.prompt_tokens or 0 for r in told)


def _per_chunk(rec: RequestRecord) -> list[int]:
    if rec.chunk_tokens is not None and len(rec.chunk_tokens) == len(rec.chunks):
        return [max(1, k) for k in rec.chunk_tokens]
    return [1] * len(rec.chunks)


def tokens_in_window(rec: RequestRecord, start: float, end: float) -> float:
    """Tokens that arrived in (start, end]: chunk weights scaled so the request's total is ``usage``'s."""
    if not rec.chunks:
        return 0.0
    weights = _per_chunk(rec)
    inside = sum(k for t, k in zip(rec.chunks, weights, strict=True) if start < t <= end)
    return inside * rec.completion_tokens / sum(weights)


@dataclass(frozen=True)
class SteadyState:
    start: float
    end: float
    tokens: float
    tok_s: float


def steady_state_decode(recs: Sequence[RequestRecord]) -> SteadyState | None:
    """Batched decode while every stream decodes: from the last stream's first token to the first
    stream's last token; the streams' tokens inside that interval over its length. None when the
    streams never all decoded at once (or a request failed)."""
    if not recs or len(_ok(recs)) != len(recs):
        return None
    start = max(r.chunks[0] for r in recs)
    end = min(r.chunks[-1] for r in recs)
    if end <= start:
        return None
    tokens = sum(tokens_in_window(r, start, end) for r in recs)
    return SteadyState(start, end, tokens, tokens / (end - start))


def itl_series(rec: RequestRecord) -> list[tuple[float, float, float]]:
    """(previous chunk time, chunk time, per-token gap) for each token of each chunk after the first:
    a chunk of k tokens gives k entries of gap / k."""
    c, k = rec.chunks, _per_chunk(rec)
    return [(c[i - 1], c[i], (c[i] - c[i - 1]) / k[i]) for i in range(1, len(c)) for _ in range(k[i])]


def gaps_overlapping(recs: Sequence[RequestRecord], start: float, end: float) -> list[float]:
    """Inter-token gaps of the streams that overlap (start, end): a pause that began before a long
    prompt arrived and ended after it counts, since the prompt lengthened it."""
    return [g for r in recs for prev, t, g in itl_series(r) if t > start and prev < end]


def gaps_within(recs: Sequence[RequestRecord], start: float, end: float) -> list[float]:
    """Inter-token gaps lying entirely inside [start, end]."""
    return [g for r in recs for prev, t, g in itl_series(r) if prev >= start and t <= end]


def interference(streams: Sequence[RequestRecord], long: RequestRecord) -> dict[str, float | int | None]:
    """The streams' ITL p95 undisturbed (all decoding, before the long prompt is sent) and while the long
    prompt prefills (its send to its first token), their ratio, and the long prompt's TTFT."""
    ok = _ok(streams)
    if len(ok) != len(streams) or long.error is not None or not long.chunks:
        return {"itl_p95_undisturbed_s": None, "itl_p95_prefill_s": None, "itl_ratio": None,
                "long_ttft_s": long.ttft, "gaps_undisturbed": 0, "gaps_prefill": 0,
                "streams_outlast_prefill": None}
    all_decoding = max(r.chunks[0] for r in ok)
    quiet = gaps_within(ok, all_decoding, long.send)
    busy = gaps_overlapping(ok, long.send, long.chunks[0])
    p_quiet, p_busy = percentile(quiet, 95), percentile(busy, 95)
    return {
        "itl_p95_undisturbed_s": p_quiet,
        "itl_p95_prefill_s": p_busy,
        "itl_ratio": p_busy / p_quiet if p_quiet and p_busy is not None else None,
        "long_ttft_s": long.chunks[0] - long.send,
        "gaps_undisturbed": len(quiet),
        "gaps_prefill": len(busy),
        # False means some stream finished before the prompt's first token, so part of the prefill ran undisturbed.
        "streams_outlast_prefill": min(r.chunks[-1] for r in ok) >= long.chunks[0],
    }
