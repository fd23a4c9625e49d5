"""A sha256 over every logit of a fixed multi-stream run, to check what two llama-cpp-python builds compute
differently (qwenhost's patch 0001 changes no logit; 0003 changes every flash-attention step's by float rounding,
with the same greedy tokens; docs/engine.md).

    .venv/bin/python bench/logits_digest.py                          # unified pool, the small model
    /path/to/other-venv/bin/python bench/logits_digest.py            # the same digest expected
    .venv/bin/python bench/logits_digest.py --kv-layout per-sequence
    /path/to/other-venv/bin/python bench/logits_digest.py --dump /tmp/a.npy && \
        .venv/bin/python bench/logits_digest.py --compare /tmp/a.npy  # which rows differ, and by how much

16 streams with prompts of 40-595 tokens are prefilled one by one (so their cells interleave in a unified pool),
decoded together greedily for --steps steps, then one step mixes 15 decode rows with a 40-token prompt chunk,
then one sequence takes a 96-token chunk over its interleaved history (stock llama.cpp's tiled kernel; patch
0003's row blocks), then one sequence decodes alone for 4 steps (the split-KV path). Prints the digest and the
greedy tokens' own digest.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from qwenhost.engine.runner import ModelRunner, RunnerConfig

WORDS = "river station engine letter quiet ancient distant remembered walked past".split()


class Logits:
    """Every logit the run hashes, in order; kept too when --dump asks for them (to measure a difference)."""

    def __init__(self, keep: bool) -> None:
        self.sha, self.kept = hashlib.sha256(), [] if keep else None

    def update(self, logits: np.ndarray) -> None:
        self.sha.update(logits.tobytes())
        if self.kept is not None:
            self.kept.append(logits.copy())

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def decode(r: ModelRunner) -> None:
    if r.decode() != 0:
        raise RuntimeError("llama_decode failed")


def digest(model: Path, unified: bool, steps: int, threads: int, keep: bool = False) -> tuple[Logits, str]:
    r = ModelRunner(RunnerConfig(model_path=model, n_ctx=16384, n_seq_max=16, n_batch=2048, n_ubatch=512,
                                 n_threads=threads, kv_unified=unified))
    try:
        prompts = [r.tokenize(" ".join(WORDS[(i + j) % 10] for j in range(40 + 37 * i))) for i in range(16)]
        b, h, tokens = r.batch, Logits(keep), hashlib.sha256()
        pos, last = {}, {}
        for s, p in enumerate(prompts):
            b.clear()
            i = b.add(p, 0, s, True)
            decode(r)
            pos[s], last[s] = len(p), int(np.argmax(r.logits(i)))
        for _ in range(steps):
            b.clear()
            for s in range(16):
                b.add([last[s]], pos[s], s, True)
                pos[s] += 1
            decode(r)
            for s in range(16):
                logits = r.logits(s)
                h.update(logits)
                last[s] = int(np.argmax(logits))
                tokens.update(last[s].to_bytes(4, "little"))
        b.clear()
        rows = [b.add([last[s]], pos[s], s, True) for s in range(15)]
        rows.append(b.add(prompts[15][:40], pos[15], 15, True))
        decode(r)
        for s, i in enumerate(rows[:15]):
            pos[s] += 1
            last[s] = int(np.argmax(r.logits(i)))
        for i in rows:
            h.update(r.logits(i))
        # a 96-token chunk of one sequence, whose history now lies one cell in 16 between the others' cells: the
        # tiled kernel (64-row query tiles) over KV tiles that are partly masked, some wholly
        b.clear()
        chunk = prompts[14][:96]
        end = b.add(chunk, pos[7], 7, True) + 1
        tail = range(end - 16, end)  # the outputs a step may have (n_seq_max)
        b.logits[tail.start:tail.stop] = 1
        decode(r)
        for i in tail:
            h.update(r.logits(i))
        pos[7] += len(chunk)
        last[7] = int(np.argmax(r.logits(end - 1)))
        # one sequence alone: one query row over 512+ cells takes the kernel's split-KV path (threads share the
        # cells and merge partial results)
        for _ in range(4):
            b.clear()
            i = b.add([last[3]], pos[3], 3, True)
            pos[3] += 1
            decode(r)
            logits = r.logits(i)
            h.update(logits)
            last[3] = int(np.argmax(logits))
        return h, tokens.hexdigest()
    finally:
        r.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path,
                    default=Path.home() / ".local/share/qwenhost/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    ap.add_argument("--kv-layout", choices=["unified", "per-sequence"], default="unified")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dump", type=Path, help="also save every hashed logit here (.npy), one row per output")
    ap.add_argument("--compare", type=Path, help="a --dump of another build: print the largest difference")
    a = ap.parse_args()
    if a.compare and not a.compare.is_file():
        ap.error(f"--compare {a.compare}: no such file (make one with --dump)")
    logits, tokens = digest(a.model, a.kv_layout == "unified", a.steps, a.threads, keep=bool(a.dump or a.compare))
    print(f"logits sha256 {logits.hexdigest()}\ntokens sha256 {tokens}")
    if logits.kept is not None:
        rows = np.stack(logits.kept)
        if a.dump:
            np.save(a.dump, rows)
        if a.compare:
            other = np.load(a.compare)
            if other.shape != rows.shape:
                ap.error(f"--compare {a.compare} holds {other.shape[0]} rows of {other.shape[-1]} logits, this run"
                         f" {rows.shape[0]} of {rows.shape[1]}: dump and compare with the same --model, --steps and"
                         " --kv-layout")
            diff = np.abs(rows - other).max(axis=1)
            print(f"rows differing {int((diff > 0).sum())} of {len(rows)}; largest |logit difference| {diff.max():.6f}"
                  f" (logits span {float(rows.max() - rows.min()):.1f}); same argmax in every row:"
                  f" {bool((rows.argmax(axis=1) == other.argmax(axis=1)).all())}")


if __name__ == "__main__":
    main()
