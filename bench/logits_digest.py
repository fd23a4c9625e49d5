"""A sha256 over every logit of a fixed multi-stream run, to check that two llama-cpp-python builds compute the
same thing (qwenhost's patches to llama.cpp must not change a single logit; docs/engine.md).

    .venv/bin/python bench/logits_digest.py                          # unified pool, the small model
    /path/to/other-venv/bin/python bench/logits_digest.py            # the same digest expected
    .venv/bin/python bench/logits_digest.py --kv-layout per-sequence

16 streams with prompts of 40-595 tokens are prefilled one by one (so their cells interleave in a unified pool),
decoded together greedily for --steps steps, then one step mixes 15 decode rows with a 40-token prompt chunk
(the row-by-row flash-attention kernel), then one sequence decodes alone for 4 steps (the split-KV path). Prints
the digest and the greedy tokens' own digest.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from qwenhost.engine.runner import ModelRunner, RunnerConfig

WORDS = "river station engine letter quiet ancient distant remembered walked past".split()


def digest(model: Path, unified: bool, steps: int, threads: int) -> tuple[str, str]:
    r = ModelRunner(RunnerConfig(model_path=model, n_ctx=16384, n_seq_max=16, n_batch=2048, n_ubatch=512,
                                 n_threads=threads, kv_unified=unified))
    try:
        prompts = [r.tokenize(" ".join(WORDS[(i + j) % 10] for j in range(40 + 37 * i))) for i in range(16)]
        b, h, tokens = r.batch, hashlib.sha256(), hashlib.sha256()
        pos, last = {}, {}
        for s, p in enumerate(prompts):
            b.clear()
            i = b.add(p, 0, s, True)
            if r.decode() != 0:
                raise RuntimeError("llama_decode failed")
            pos[s], last[s] = len(p), int(np.argmax(r.logits(i)))
        for _ in range(steps):
            b.clear()
            for s in range(16):
                b.add([last[s]], pos[s], s, True)
                pos[s] += 1
            if r.decode() != 0:
                raise RuntimeError("llama_decode failed")
            for s in range(16):
                logits = r.logits(s)
                h.update(logits.tobytes())
                last[s] = int(np.argmax(logits))
                tokens.update(last[s].to_bytes(4, "little"))
        b.clear()
        rows = [b.add([last[s]], pos[s], s, True) for s in range(15)]
        rows.append(b.add(prompts[15][:40], pos[15], 15, True))
        if r.decode() != 0:
            raise RuntimeError("llama_decode failed")
        for s, i in enumerate(rows[:15]):
            pos[s] += 1
            last[s] = int(np.argmax(r.logits(i)))
        for i in rows:
            h.update(r.logits(i).tobytes())
        # one sequence alone: one query row over 512+ cells takes the kernel's split-KV path (threads share the
        # cells and merge partial results)
        for _ in range(4):
            b.clear()
            i = b.add([last[3]], pos[3], 3, True)
            pos[3] += 1
            if r.decode() != 0:
                raise RuntimeError("llama_decode failed")
            logits = r.logits(i)
            h.update(logits.tobytes())
            last[3] = int(np.argmax(logits))
        return h.hexdigest(), tokens.hexdigest()
    finally:
        r.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path,
                    default=Path.home() / ".local/share/qwenhost/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    ap.add_argument("--kv-layout", choices=["unified", "per-sequence"], default="unified")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    logits, tokens = digest(a.model, a.kv_layout == "unified", a.steps, a.threads)
    print(f"logits sha256 {logits}\ntokens sha256 {tokens}")


if __name__ == "__main__":
    main()
