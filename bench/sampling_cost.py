"""What one token's sampling costs: qwenhost's TokenSampler against llama.cpp's chain with its own penalties.

Qwen's default request (repetition penalty 1.05 over 64 tokens, EOS biased off as `ignore_eos` does) on the
small model's ~152k-token vocabulary, greedy and at temperature 0.7, with a full 64-token window.

    .venv/bin/python bench/sampling_cost.py [--model qwen2.5-coder:0.5b] [--n 300]
"""

from __future__ import annotations

import argparse
import time

import llama_cpp as L
import numpy as np

from qwenhost.engine.runner import ModelRunner, RunnerConfig
from qwenhost.engine.sampling import SamplingParams, TokenSampler
from qwenhost.engine.sources import resolve_model


def llama_cpp_chain(n_vocab: int, p: SamplingParams) -> L.llama_sampler_p:
    """The chain as llama.cpp's own samplers would build it: bias, penalties, then greedy or top-k/top-p/temp/dist."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    n = len(p.logit_bias)
    arr = (L.llama_logit_bias * n)(*[L.llama_logit_bias(t, b) for t, b in p.logit_bias.items()])
    parts = [L.llama_sampler_init_logit_bias(n_vocab, n, arr),
             L.llama_sampler_init_penalties(n_vocab, p.penalty_last_n, p.repetition_penalty, 0.0, 0.0)]
    if p.temperature <= 0:
        parts.append(L.llama_sampler_init_greedy())
    else:
        parts += [L.llama_sampler_init_top_k(p.top_k), L.llama_sampler_init_top_p(p.top_p, 1),
                  L.llama_sampler_init_temp(p.temperature), L.llama_sampler_init_dist(1)]
    for s in parts:
        L.llama_sampler_chain_add(chain, s)
    return chain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder:0.5b")
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    r = ModelRunner(RunnerConfig(model_path=resolve_model(args.model, progress=False), n_ctx=512, n_seq_max=1,
                                 n_batch=64, n_ubatch=64, n_threads=2))
    r.batch.clear()
    idx = r.batch.add(r.tokenize("def fib(n):\n    return"), 0, 0, True)
    if r.decode() != 0:
        raise SystemExit("llama_decode failed")
    bias = dict.fromkeys(r.eog_tokens(), float("-inf"))
    history = [int(t) for t in np.random.default_rng(0).integers(0, r.n_vocab, 64)]
    for temp in (0.0, 0.7):
        p = SamplingParams(temperature=temp, repetition_penalty=1.05, logit_bias=bias)
        ours, ref = TokenSampler(r, p), llama_cpp_chain(r.n_vocab, p)
        for t in history:
            ours.edits.accept(t)
            L.llama_sampler_accept(ref, t)
        ms = {}
        for name, sample in (("qwenhost", lambda s=ours: s.sample(idx)),
                             ("llama.cpp chain", lambda c=ref: L.llama_sampler_sample(c, r.ctx, idx))):
            sample()
            t0 = time.perf_counter()
            for _ in range(args.n):
                sample()
            ms[name] = (time.perf_counter() - t0) / args.n * 1e3
        print(f"temperature {temp}: qwenhost {ms['qwenhost']:.3f} ms, llama.cpp chain {ms['llama.cpp chain']:.3f} ms"
              f" a token ({ms['llama.cpp chain'] / ms['qwenhost']:.1f}x)")
        ours.close()
        L.llama_sampler_free(ref)
    r.close()


if __name__ == "__main__":
    main()
