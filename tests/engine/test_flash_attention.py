"""qwenhost's flash-attention kernel (scripts/llama-cpp-patches/) on the real 0.5B model in a unified KV pool.

With an F16 KV cache, every attention row goes through qwenhost's row kernel (patch 0003): units of up to 16 rows
whose masks nearly agree (a prompt chunk's rows) with the q heads of their GQA group, over the cells some row of the
unit may see. Here a sequence's history lies one cell in eight between other sequences' cells, and its next tokens
go in as one 96-row call, as 48-row calls, as 5-row calls (whose thread chunks split the groups of 7 heads and the
rows) and one row at a time (the split-KV path: threads take ranges of cells, merged after). The reference is the
same model without flash attention (llama.cpp's matrix products and softmax, which no patch touches).
All must give the same next-token distribution up to float rounding: a wrong cell index (a K row paired with
another cell's V row, a visible cell dropped, a masked one kept) or a wrong head moves logits by whole units
and changes argmaxes.
"""

from __future__ import annotations

import numpy as np
import pytest

from qwenhost.engine.runner import ModelRunner, RunnerConfig

N_SEQ, PREFIX, STEPS, CHUNK = 8, 24, 96, 96


def _runner(path, flash_attn: bool) -> ModelRunner:
    return ModelRunner(RunnerConfig(model_path=path, n_ctx=4096, n_seq_max=16, n_batch=512, n_ubatch=512,
                                    n_threads=2, kv_unified=True, flash_attn=flash_attn))


@pytest.fixture(scope="module")
def runner(small_model_path):
    r = _runner(small_model_path, True)
    yield r
    r.close()


@pytest.fixture(scope="module")
def plain(small_model_path):
    """The reference: attention without flash attention (matrix products and a softmax), which no patch touches."""
    r = _runner(small_model_path, False)
    yield r
    r.close()


def _decode(r: ModelRunner) -> None:
    if r.decode() != 0:
        raise RuntimeError("llama_decode failed")


def _chunk_logits(r: ModelRunner, tokens: list[int], seq: int, start: int, piece: int) -> np.ndarray:
    """The last 8 rows' logits of `tokens` appended to `seq` in calls of `piece` tokens, then removed again."""
    rows = []
    for a in range(0, len(tokens), piece):
        part = tokens[a:a + piece]
        r.batch.clear()
        first = r.batch.add(part, start + a, seq, True) - (len(part) - 1)
        tail = [first + j for j in range(len(part)) if a + j >= len(tokens) - 8]
        r.batch.logits[tail] = 1
        _decode(r)
        rows += [r.logits(i).copy() for i in tail]
    r.seq_rm(seq, start, -1)
    return np.stack(rows)


WORDS = "river station engine letter quiet ancient distant remembered walked past".split()


def _one_cell_each(r: ModelRunner, pos: dict[int, int], steps: int) -> dict[int, int]:
    """`steps` calls of one token per sequence, so each sequence's cells lie one in N_SEQ across the pool."""
    for step in range(steps):
        r.batch.clear()
        for s in range(N_SEQ):
            r.batch.add([1000 + 37 * s + step % 50], pos[s], s, False)
            pos[s] += 1
        _decode(r)
    return pos


def _interleaved_histories(r: ModelRunner) -> dict[int, int]:
    """N_SEQ sequences whose histories lie one cell in N_SEQ across the pool; their next positions."""
    r.clear()
    pos = {}
    for s in range(N_SEQ):
        prompt = r.tokenize(" ".join(WORDS[(s + j) % 10] for j in range(PREFIX)))
        r.batch.clear()
        r.batch.add(prompt, 0, s, False)
        _decode(r)
        pos[s] = len(prompt)
    return _one_cell_each(r, pos, STEPS)


# Float rounding through 24 layers moves logits by tenths at most (measured: 0.39 for stock llama.cpp between
# 1x96 and 2x48 rows; 0.38-0.49 between qwenhost's kernel and attention without flash attention); a wrong cell
# or head moves them by units.
TOLERANCE = 1.0


def _close(a: np.ndarray, b: np.ndarray, what: object, near_tie: float | None = 0.5) -> None:
    """Within TOLERANCE everywhere, and the same next token in every row (near_tie None) or wherever `a`'s two best
    tokens are more than near_tie apart (between attention paths, measured: a decode row whose two best differ by
    0.014 flips)."""
    top2 = np.sort(a, axis=1)[:, -2:]
    decided = slice(None) if near_tie is None else top2[:, 1] - top2[:, 0] > near_tie
    assert (a.argmax(axis=1) == b.argmax(axis=1))[decided].all(), what
    assert np.abs(a - b).max() < TOLERANCE, (what, np.abs(a - b).max())


def test_a_chunk_over_an_interleaved_history_matches_attention_without_flash(runner: ModelRunner,
                                                                       plain: ModelRunner) -> None:
    chunk = runner.tokenize(" ".join(WORDS[j % 7] for j in range(200)))[:CHUNK]
    assert len(chunk) == CHUNK
    pos = _interleaved_histories(plain)
    reference = _chunk_logits(plain, chunk, 3, pos[3], CHUNK)

    pos = _interleaved_histories(runner)
    whole = _chunk_logits(runner, chunk, 3, pos[3], CHUNK)
    again = _chunk_logits(runner, chunk, 3, pos[3], CHUNK)
    np.testing.assert_array_equal(whole, again)  # removing the chunk restored the pool: the run is repeatable
    for piece in (CHUNK, 48, 5, 1):
        _close(reference, whole if piece == CHUNK else _chunk_logits(runner, chunk, 3, pos[3], piece), piece)


def _step(r: ModelRunner, pos: dict[int, int], chunk: list[int]) -> np.ndarray:
    """One call: a decode row for every sequence but 3, and `chunk` for sequence 3; logits, then the rows removed."""
    r.batch.clear()
    rows = [r.batch.add([2000 + s], pos[s], s, True) for s in range(N_SEQ) if s != 3]
    last = r.batch.add(chunk, pos[3], 3, True)
    r.batch.logits[last - 7: last + 1] = 1  # the chunk's last 8 rows (n_outputs_max is 16)
    rows += range(last - 7, last + 1)
    _decode(r)
    out = np.stack([r.logits(i).copy() for i in rows])
    for s in range(N_SEQ):
        r.seq_rm(s, pos[s], -1)
    return out


def test_a_step_mixing_decode_rows_and_a_prompt_chunk_matches_attention_without_flash(runner: ModelRunner,
                                                                                plain: ModelRunner) -> None:
    """Decode rows of different sequences stay units of one row; the chunk's rows, beside them in the same call
    and the same thread chunks, form units of their own."""
    chunk = runner.tokenize(" ".join(WORDS[j % 9] for j in range(80)))[:40]
    pos = _interleaved_histories(plain)
    reference = _step(plain, pos, chunk)
    pos = _interleaved_histories(runner)
    _close(reference, _step(runner, pos, chunk), "mixed")


def _decode_rows(r: ModelRunner, pos: dict[int, int]) -> np.ndarray:
    """One decode row per sequence, in one call; their logits, then the rows removed."""
    r.batch.clear()
    for s in range(N_SEQ):
        r.batch.add([2000 + s], pos[s], s, True)
    _decode(r)
    out = np.stack([r.logits(s).copy() for s in range(N_SEQ)])
    for s in range(N_SEQ):
        r.seq_rm(s, pos[s], -1)
    return out


def _each_row_alone(r: ModelRunner, pos: dict[int, int]) -> np.ndarray:
    """The same rows one call each (the split-KV path: threads take ranges of cells, merged after)."""
    alone = []
    for s in range(N_SEQ):
        r.batch.clear()
        r.batch.add([2000 + s], pos[s], s, True)
        _decode(r)
        alone.append(r.logits(0).copy())
        r.seq_rm(s, pos[s], -1)
    return np.stack(alone)


def test_a_decode_step_of_many_sequences_matches_each_sequence_alone(runner: ModelRunner) -> None:
    """One row per sequence in one call (rows of different sequences in one thread chunk) against each
    sequence's row alone (the split-KV path: threads take ranges of cells, merged after)."""
    pos = _interleaved_histories(runner)
    together = _decode_rows(runner, pos)
    _close(together, _each_row_alone(runner, pos), "decode", near_tie=None)  # the same kernel both ways


SHARED = 64  # a system prompt's worth of cells that sequences share in the pool (at least one 32-cell block)


def _shared_prefix_histories(r: ModelRunner, own_cells: int) -> dict[int, int]:
    """N_SEQ sequences that all but one share their first SHARED cells (computed once, then referenced, as the
    prefix cache does), each with `own_cells` of its own after them, one cell in N_SEQ across the pool.
    Sequence 5 has its own prefix, so the rows that share one are cut in two runs around it."""
    r.clear()
    shared = r.tokenize(" ".join(WORDS[j % 10] for j in range(200)))[:SHARED]
    r.batch.clear()
    r.batch.add(shared, 0, 0, False)
    _decode(r)
    for s in range(1, N_SEQ):
        if s != 5:
            r.copy_prefix(0, s, SHARED)
    own = r.tokenize(" ".join(WORDS[(j * 3) % 10] for j in range(200)))[:SHARED]
    r.batch.clear()
    r.batch.add(own, 0, 5, False)
    _decode(r)
    pos = dict.fromkeys(range(N_SEQ), SHARED)
    return _one_cell_each(r, pos, own_cells)


# Fewer own cells than shared ones, and more: late in a conversation each row's own history outgrows the system
# prompt, and only patch 0003's join rule (conversions saved) still makes the last step's rows one unit then. The
# test checks the logits, not which path ran; the histories, built a step at a time, pass through units either way.
@pytest.mark.parametrize("own_cells", [STEPS // 2, STEPS])
def test_decode_rows_over_a_shared_prefix_match_attention_without_flash(runner: ModelRunner, plain: ModelRunner,
                                                                        own_cells: int) -> None:
    """Decode rows whose sequences share a prefix: the shared cells are scored once for all the rows, then each
    row's own cells carry on the same softmax. A row that skipped its own cells, took another row's, or counted
    a shared cell twice would move its logits by units."""
    reference = _decode_rows(plain, _shared_prefix_histories(plain, own_cells))
    together = _decode_rows(runner, _shared_prefix_histories(runner, own_cells))
    _close(reference, together, "shared prefix")
    alone = _each_row_alone(runner, _shared_prefix_histories(runner, own_cells))  # no shared scoring
    _close(alone, together, "shared prefix, each row alone")
