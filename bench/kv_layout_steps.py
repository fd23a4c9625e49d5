"""What a decode-only step costs in each KV layout: n streams with h tokens each, one token per stream, in a
unified pool, in per-sequence streams with consecutive ids, and in per-sequence streams with a gap after every
stream (ids 0, 2, 4, ...: llama.cpp then cuts one micro-batch per stream, see docs/engine.md). With
--shared-prefix N the first N tokens of every stream's history are computed once and shared, as qwenhost's prefix
cache shares a system prompt (in a unified pool the streams then reference the same cells).

    .venv/bin/python bench/kv_layout_steps.py                      # 16 streams x 600 tokens, 8 timed steps
    .venv/bin/python bench/kv_layout_steps.py --streams 8 --history 1200
    .venv/bin/python bench/kv_layout_steps.py --layouts unified,per-sequence
    .venv/bin/python bench/kv_layout_steps.py --layouts unified --history 1000 --shared-prefix 650   # chat-like

Each layout gets a fresh context of --ctx tokens and --slots sequence ids (as many per-sequence streams), the
streams' prompts are computed 512 tokens at a time and interleaved with a few decode steps as in a server.
Seconds per step (median of --steps); no thresholds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from qwenhost.engine.runner import ModelRunner, RunnerConfig

TEXT = "The river walked past the ancient station while the quiet engine remembered every distant letter. "


def decode(r: ModelRunner) -> None:
    if r.decode() != 0:
        raise RuntimeError("llama_decode failed (is --ctx large enough?)")


def time_layout(model: Path, ctx: int, slots: int, ids: list[int], history: int, steps: int, threads: int,
                unified: bool, shared: int = 0) -> float:
    r = ModelRunner(RunnerConfig(model_path=model, n_ctx=ctx, n_seq_max=slots, n_batch=2048, n_ubatch=512,
                                 n_threads=threads, kv_unified=unified))
    try:
        toks = r.tokenize(TEXT * (history // 15 + steps + 8))
        b = r.batch
        pos = dict.fromkeys(ids, 0)
        if shared:
            for i in range(0, shared, 512):
                b.clear()
                b.add(toks[i: min(shared, i + 512)], i, ids[0], True)
                decode(r)
            for s in ids[1:]:
                r.copy_prefix(ids[0], s, shared)
            pos = dict.fromkeys(ids, shared)
        while min(pos.values()) < history:  # prompts chunk by chunk, round robin, so cells interleave
            for s in ids:
                n = min(512, history - pos[s])
                if n > 0:
                    b.clear()
                    b.add(toks[pos[s]: pos[s] + n], pos[s], s, True)
                    decode(r)
                    pos[s] += n
        times = []
        for _ in range(steps):
            b.clear()
            for s in ids:
                b.add([toks[pos[s]]], pos[s], s, True)
                pos[s] += 1
            t0 = time.perf_counter()
            decode(r)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        r.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path,
                    default=Path.home() / ".local/share/qwenhost/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--history", type=int, default=600, help="tokens each stream already has")
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("--slots", type=int, default=32, help="sequence ids (per-sequence: streams of ctx/slots)")
    ap.add_argument("--shared-prefix", type=int, default=0,
                    help="tokens at the start of every stream's history computed once and shared")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layouts", default="unified,per-sequence,gapped",
                    help="which to time, comma-separated: unified, per-sequence, gapped")
    a = ap.parse_args()
    wanted = {x.strip() for x in a.layouts.split(",") if x.strip()}
    if not wanted or wanted - {"unified", "per-sequence", "gapped"}:
        ap.error("--layouts takes unified, per-sequence and/or gapped")
    if 2 * a.streams > a.slots:
        ap.error("--slots must be at least twice --streams (the gapped layout uses every other id)")
    if not 0 <= a.shared_prefix < a.history:
        ap.error("--shared-prefix must be at least 0 and less than --history")
    packed, gapped = list(range(a.streams)), list(range(0, 2 * a.streams, 2))
    print(f"{a.streams} streams x {a.history} tokens ({a.shared_prefix} shared), ctx {a.ctx}, {a.slots} sequence ids, "
          f"{a.threads} threads")
    for key, name, ids, unified in (("unified", "unified", packed, True),
                                    ("per-sequence", "per-sequence, ids 0..n-1", packed, False),
                                    ("gapped", "per-sequence, every other id", gapped, False)):
        if key not in wanted:
            continue
        dt = time_layout(a.model, a.ctx, a.slots, ids, a.history, a.steps, a.threads, unified, a.shared_prefix)
        print(f"  {name:30s} {dt:.3f} s/step  {a.streams / dt:.1f} tok/s")


if __name__ == "__main__":
    main()
