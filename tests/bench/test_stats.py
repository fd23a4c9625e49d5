"""The bench's metrics on synthetic timelines, against numbers worked out by hand."""

from __future__ import annotations

import pytest

from qwenhost.bench import stats
from qwenhost.bench.stats import RequestRecord


def rec(send: float, chunks: list[float], tokens: int | None = None, error: str | None = None) -> RequestRecord:
    return RequestRecord(send=send, chunks=chunks, completion_tokens=len(chunks) if tokens is None else tokens,
                         max_tokens=len(chunks) if tokens is None else tokens, error=error)


def ticks(start: float, step: float, n: int) -> list[float]:
    return [start + i * step for i in range(n)]


def test_percentile_interpolates_between_ranks() -> None:
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert stats.percentile(xs, 50) == 3.0
    assert stats.percentile(xs, 0) == 1.0
    assert stats.percentile(xs, 100) == 5.0
    assert stats.percentile(xs, 95) == pytest.approx(4.8)  # rank 3.8: 4 + 0.8 * (5 - 4)
    assert stats.percentile([1.0, 2.0], 50) == 1.5
    assert stats.percentile([], 50) is None
    with pytest.raises(ValueError):
        stats.percentile(xs, 101)


def test_decode_rate_excludes_the_first_token() -> None:
    r = rec(0.0, ticks(1.0, 0.1, 11))  # 11 tokens, first at 1.0, last at 2.0
    assert stats.decode_rate(r) == pytest.approx(10.0)
    assert r.ttft == 1.0
    assert stats.decode_rate(rec(0.0, [1.0])) is None
    # usage counts more tokens than chunks (e.g. a token with no text): usage wins
    assert stats.decode_rate(rec(0.0, [1.0, 2.0], tokens=5)) == pytest.approx(4.0)


def test_aggregate_over_wall_time_from_first_send() -> None:
    a = rec(0.0, ticks(1.0, 1.0, 4))  # 4 tokens, last at 4.0
    b = rec(0.5, ticks(2.0, 1.0, 6))  # 6 tokens, last at 7.0
    assert stats.aggregate_rate([a, b]) == pytest.approx(10 / 7.0)
    assert stats.ttfts([a, b]) == [1.0, 1.5]
    failed = rec(0.0, [], tokens=0, error="HTTP 500")
    assert stats.aggregate_rate([a, failed]) == pytest.approx(4 / 4.0)


def test_steady_state_counts_tokens_while_all_streams_decode() -> None:
    # A: tokens every 0.5 s from 1.0 to 6.0 (11); B: every 1.0 s from 2.0 to 9.0 (8).
    a = rec(0.0, ticks(1.0, 0.5, 11))
    b = rec(0.0, ticks(2.0, 1.0, 8))
    s = stats.steady_state_decode([a, b])
    assert s is not None
    assert (s.start, s.end) == (2.0, 6.0)
    # In (2, 6]: A has 2.5, 3.0, ..., 6.0 = 8 tokens; B has 3, 4, 5, 6 = 4 tokens -> 12 tokens over 4 s.
    assert s.tokens == pytest.approx(12)
    assert s.tok_s == pytest.approx(3.0)


def test_steady_state_scales_chunks_to_usage_tokens() -> None:
    a = rec(0.0, ticks(1.0, 1.0, 5), tokens=10)  # 2 tokens per chunk
    b = rec(0.0, ticks(1.0, 1.0, 5))
    s = stats.steady_state_decode([a, b])
    assert s is not None and (s.start, s.end) == (1.0, 5.0)
    assert s.tok_s == pytest.approx((4 * 2 + 4) / 4.0)


def test_steady_state_none_without_overlap_or_with_a_failure() -> None:
    assert stats.steady_state_decode([rec(0.0, [1.0, 2.0]), rec(0.0, [3.0, 4.0])]) is None
    assert stats.steady_state_decode([rec(0.0, [1.0, 5.0]), rec(0.0, [], tokens=0, error="x")]) is None


def test_itl_windows() -> None:
    r = rec(0.0, [1.0, 1.1, 1.2, 2.2, 2.3])
    assert [round(g, 6) for _, _, g in stats.itl_series(r)] == [0.1, 0.1, 1.0, 0.1]
    # The 1.0 s gap (1.2 -> 2.2) overlaps (1.5, 2.0) although neither end lies inside it.
    assert [round(g, 6) for g in stats.gaps_overlapping([r], 1.5, 2.0)] == [1.0]
    assert [round(g, 6) for g in stats.gaps_within([r], 1.0, 1.2)] == [0.1, 0.1]
    assert stats.gaps_within([r], 1.05, 1.15) == []


def test_interference_metrics() -> None:
    # Times are binary fractions so the window edges compare exactly. The long prompt is sent at 3.0 and
    # its first token arrives at 5.0; both streams tick every 0.25 s and pause while it prefills.
    s1 = rec(0.0, [*ticks(1.0, 0.25, 9), 4.75, *ticks(5.0, 0.25, 8)])  # ... 2.75, 3.0 | 4.75 | 5.0 ...
    s2 = rec(0.0, [*ticks(1.125, 0.25, 8), 4.875, *ticks(5.125, 0.25, 8)])  # ... 2.875 | 4.875 | 5.125 ...
    long = rec(3.0, [5.0, 5.25])
    m = stats.interference([s1, s2], long)
    assert m["long_ttft_s"] == 2.0
    # Undisturbed: gaps inside [1.125 (both decoding), 3.0]: 7 per stream, all 0.25 s (s1's 2.75 -> 3.0
    # included: it ends as the prompt is sent).
    assert m["gaps_undisturbed"] == 14
    assert m["itl_p95_undisturbed_s"] == 0.25
    # Overlapping (3.0, 5.0): s1 3.0 -> 4.75 (1.75), 4.75 -> 5.0 (0.25); s2 2.875 -> 4.875 (2.0),
    # 4.875 -> 5.125 (0.25). Sorted [0.25, 0.25, 1.75, 2.0]: p95 at rank 2.85 = 1.75 + 0.85 * 0.25.
    assert m["gaps_prefill"] == 4
    assert m["itl_p95_prefill_s"] == pytest.approx(1.9625)
    assert m["itl_ratio"] == pytest.approx(7.85)
    assert m["streams_outlast_prefill"] is True


def test_interference_with_a_failed_long_prompt() -> None:
    m = stats.interference([rec(0.0, [1.0, 1.1])], rec(1.0, [], tokens=0, error="HTTP 400"))
    assert m["itl_ratio"] is None and m["long_ttft_s"] is None


def test_multi_token_chunks_count_as_their_tokens() -> None:
    # Chunks at 1, 2, 3, 5 s: the last carries 3 tokens (an emoji: its bytes arrive together); usage says 6.
    r = rec(0.0, [1.0, 2.0, 3.0, 5.0], tokens=6)
    r.chunk_tokens = [1, 1, 1, 3]
    # Per-token gaps: 1, 1, then 2 s over 3 tokens = 3 x 0.667 (not one 2 s pause).
    assert [round(g, 4) for _, _, g in stats.itl_series(r)] == [1.0, 1.0, 0.6667, 0.6667, 0.6667]
    assert stats.tokens_in_window(r, 2.5, 5.0) == pytest.approx(4.0)  # 1 + 3
    # Without per-chunk counts each chunk is 6 / 4 = 1.5 tokens.
    r.chunk_tokens = None
    assert stats.tokens_in_window(r, 2.5, 5.0) == pytest.approx(3.0)
    # Weights that do not add up to usage (a token with no text at all) are scaled to it.
    r.chunk_tokens = [1, 1, 1, 2]
    assert stats.tokens_in_window(r, 4.0, 5.0) == pytest.approx(2 * 6 / 5)
    # Counts of the wrong length are ignored rather than misaligned.
    r.chunk_tokens = [1, 1]
    assert len(stats.itl_series(r)) == 3


def test_cached_share_weights_by_prompt_tokens_and_skips_servers_that_do_not_say() -> None:
    a = RequestRecord(send=0.0, chunks=[1.0], completion_tokens=1, prompt_tokens=1000, cached_tokens=900)
    b = RequestRecord(send=0.0, chunks=[1.0], completion_tokens=1, prompt_tokens=100, cached_tokens=0)
    silent = RequestRecord(send=0.0, chunks=[1.0], completion_tokens=1, prompt_tokens=500)
    failed = RequestRecord(send=0.0, prompt_tokens=400, cached_tokens=400, error="HTTP 500")
    assert stats.cached_share([a, b, silent, failed]) == pytest.approx(900 / 1100)
    assert stats.cached_share([silent]) is None


def test_computed_prompt_tokens_need_every_request_to_say() -> None:
    a = RequestRecord(send=0.0, chunks=[1.0], completion_tokens=1, prompt_tokens=1000, cached_tokens=900)
    b = RequestRecord(send=0.0, chunks=[1.0], completion_tokens=1, prompt_tokens=100, cached_tokens=0)
    silent = RequestRecord(send=0.0, chunks=[1.0], completion_tokens=1, prompt_tokens=500)
    failed = RequestRecord(send=0.0, prompt_tokens=400, cached_tokens=0, error="HTTP 500")
    assert stats.computed_prompt_tokens([a, b, failed]) == 200  # a failed request computed nothing we count
    assert stats.computed_prompt_tokens([a, silent]) is None  # a partial sum would understate the work
    assert stats.computed_prompt_tokens([failed]) is None
