"""Logit bias and penalties outside llama.cpp's chain (qwenhost/engine/sampling.py) give llama.cpp's own results.

`LogitEdits` edits only the window's and the biased tokens' cells of the logits row, where llama.cpp's penalties
sampler looks every one of the vocabulary's tokens up. The reference here is always a llama.cpp sampler chain
with its own logit_bias and penalties samplers, fed the same tokens: edited logits must be bit-identical to
what that chain leaves, and greedy and seeded sampling on the real 0.5B model must pick the same tokens.
"""

from __future__ import annotations

import ctypes

import llama_cpp as L
import numpy as np
import pytest

from qwenhost.engine.runner import ModelRunner, RunnerConfig
from qwenhost.engine.sampling import _TOKEN_DATA, LogitEdits, SamplingParams, TokenSampler

# Exactly representable frequency and presence penalties keep the float32 arithmetic free of rounding choices
# (the C compiler may fuse count * freq + present into one multiply-add); the repetition penalty divides.
PENALTIES = dict(repetition_penalty=1.5, frequency_penalty=0.5, presence_penalty=0.25)


def _reference_chain(n_vocab: int, p: SamplingParams, *, tail: list[ctypes.c_void_p]) -> ctypes.c_void_p:
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    if p.logit_bias:
        n = len(p.logit_bias)
        arr = (L.llama_logit_bias * n)(*[L.llama_logit_bias(t, b) for t, b in p.logit_bias.items()])
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_logit_bias(n_vocab, n, arr))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_penalties(
        n_vocab, p.penalty_last_n, p.repetition_penalty, p.frequency_penalty, p.presence_penalty))
    for s in tail:
        L.llama_sampler_chain_add(chain, s)
    return chain


def _chain_logits(chain: ctypes.c_void_p, logits: np.ndarray) -> np.ndarray:
    cand = np.zeros(logits.size, dtype=_TOKEN_DATA)
    cand["id"] = np.arange(logits.size, dtype=np.int32)
    cand["logit"] = logits
    arr = L.llama_token_data_array(cand.ctypes.data_as(ctypes.POINTER(L.llama_token_data)), logits.size, -1, False)
    L.llama_sampler_apply(chain, ctypes.byref(arr))
    out = np.empty_like(logits)
    out[cand["id"]] = cand["logit"]
    return out


@pytest.mark.parametrize("last_n", [5, 1, 0])
def test_edited_cells_equal_llama_cpps_bias_and_penalties(last_n: int) -> None:
    rng = np.random.default_rng(11)
    n_vocab = 3000
    bias = {7: -np.inf, 8: 2.5, 40: -1.25, 41: 0.75}
    params = SamplingParams(temperature=0, penalty_last_n=last_n, logit_bias=bias, **PENALTIES)
    edits = LogitEdits(params)
    ref = _reference_chain(n_vocab, params, tail=[])
    # Tokens repeat (counts above 1), leave the window, and include biased ones; logits include exact zeros.
    history = [3, 3, 8, 40, 3, 99, 99, 99, 41, 5, 6, 7, 3, 2999, 0, 0]
    try:
        for step, tok in enumerate(history):
            row = rng.normal(0, 3, n_vocab).astype(np.float32)
            row[[3, 99, 0]] = [0.0, -2.0, 4.0] if step % 2 else [1.5, 0.0, -0.5]
            original = row.copy()
            want = _chain_logits(ref, original)
            edit = edits.apply(row)
            np.testing.assert_array_equal(row, want)
            assert int(np.argmax(row)) == int(np.argmax(want))
            LogitEdits.restore(row, edit)
            np.testing.assert_array_equal(row, original)
            edits.accept(tok)
            L.llama_sampler_accept(ref, tok)
        window = history[-last_n:] if last_n else []
        assert edits.counts == {t: window.count(t) for t in set(window)}
    finally:
        L.llama_sampler_free(ref)


def test_no_bias_and_no_penalty_leaves_the_row_alone() -> None:
    edits = LogitEdits(SamplingParams(repetition_penalty=1.0, penalty_last_n=64))
    for tok in (1, 2, 2):
        edits.accept(tok)
    assert edits.empty and not edits.counts


@pytest.fixture(scope="module")
def runner(small_model_path):
    r = ModelRunner(RunnerConfig(model_path=small_model_path, n_ctx=1024, n_seq_max=1, n_batch=256,
                                 n_ubatch=256, n_threads=2))
    yield r
    r.close()


PROMPT = ("<|im_start|>user\nWrite the word apple twenty times, separated by commas.<|im_end|>\n"
          "<|im_start|>assistant\n")


def _generate(r: ModelRunner, params: SamplingParams, n: int, reference: ctypes.c_void_p | None,
              forced: dict[int, int] | None = None) -> list[int]:
    """Generate with TokenSampler; where given, the reference chain samples each row too and must agree.

    `forced` maps a step to a token the engine injects there (as the thinking budget does): both samplers accept
    it without sampling.
    """
    r.clear()
    tokens = r.tokenize(PROMPT)
    sampler = TokenSampler(r, params)
    out: list[int] = []
    try:
        pos, feed = 0, tokens
        for _ in range(n):
            r.batch.clear()
            idx = r.batch.add(feed, pos, 0, True)
            assert r.decode() == 0
            pos += len(feed)
            if forced and len(out) in forced:
                tok = forced[len(out)]
                sampler.accept_forced(tok)
                if reference is not None:
                    L.llama_sampler_accept(reference, tok)
                out.append(tok)
                feed = [tok]
                continue
            before = r.logits(idx).copy()
            tok = sampler.sample(idx)
            np.testing.assert_array_equal(r.logits(idx), before)  # the row is put back
            if reference is not None:
                assert int(L.llama_sampler_sample(reference, r.ctx, idx)) == tok, f"token {len(out)}"
            out.append(tok)
            feed = [tok]
    finally:
        sampler.close()
    return out


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_tokens_equal_a_llama_cpp_chain_with_its_own_penalties(runner: ModelRunner, temperature: float) -> None:
    n_vocab = runner.n_vocab
    comma = runner.tokenize(",")[0]
    params = SamplingParams(temperature=temperature, top_k=40, top_p=0.9, seed=1234, penalty_last_n=8,
                            logit_bias={comma: 1.5, runner.eos: -np.inf}, **PENALTIES)
    if temperature > 0:
        tail = [L.llama_sampler_init_top_k(40), L.llama_sampler_init_top_p(0.9, 1),
                L.llama_sampler_init_temp(temperature), L.llama_sampler_init_dist(1234)]
    else:
        tail = [L.llama_sampler_init_greedy()]
    ref = _reference_chain(n_vocab, params, tail=tail)
    try:
        # " apple" forced at two steps: the window must count it like a sampled token.
        apple = runner.tokenize(" apple")[0]
        penalized = _generate(runner, params, 24, ref, forced={3: apple, 4: apple})
    finally:
        L.llama_sampler_free(ref)
    if temperature == 0:
        # The penalties changed the text: without them greedy decoding picks other tokens.
        plain = SamplingParams(temperature=0, repetition_penalty=1.0, logit_bias={runner.eos: -np.inf})
        assert _generate(runner, plain, 24, None) != penalized
