"""What one engine step costs by its shape: decode tokens of n streams plus a prompt chunk, as one llama_decode
or as a prompt call followed by a decode call (what Scheduler.step does on the CPU from 64 rows on).

    .venv/bin/python bench/step_shapes.py                      # 16 streams x 600 tokens, prompt 800 deep
    .venv/bin/python bench/step_shapes.py --streams 8 --history 30 --depth 2000 --prompt 24,48,56,120

The streams' prompts are computed chunk by chunk and then decoded a few steps together, so their cells
interleave in the unified pool as they do in a server. Each shape is timed 3 times (median) and the cache is
put back after each timing, so every shape sees the same cache. Seconds per step; no thresholds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from qwenhost.engine.runner import ModelRunner, RunnerConfig

TEXT = "The river walked past the ancient station while the quiet engine remembered every distant letter. "


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path,
                    default=Path.home() / ".local/share/qwenhost/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
    ap.add_argument("--streams", type=int, default=16, help="sequences that decode a token each step")
    ap.add_argument("--history", type=int, default=600, help="tokens each stream already has")
    ap.add_argument("--depth", type=int, default=800, help="tokens the prompting sequence already has")
    ap.add_argument("--prompt", default="32,48,64,120,512", help="prompt-chunk sizes to time")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    sizes = [int(x) for x in a.prompt.split(",")]
    r = ModelRunner(RunnerConfig(model_path=a.model, n_ctx=32768, n_seq_max=32, n_batch=2560, n_ubatch=512,
                                 n_threads=a.threads))
    need = max(a.history, a.depth + max(sizes)) + a.streams + 64
    toks = r.tokenize(TEXT * (need // 15 + 1))
    b, long_seq = r.batch, a.streams
    pos = [0] * (a.streams + 1)
    for s in range(a.streams + 1):
        n_total = a.depth if s == long_seq else a.history
        while pos[s] < n_total:
            n = min(512, n_total - pos[s])
            b.clear()
            b.add(toks[s + pos[s]: s + pos[s] + n], pos[s], s, False)
            r.decode()
            pos[s] += n
    for _ in range(16):
        b.clear()
        for s in range(a.streams):
            b.add([toks[pos[s]]], pos[s], s, True)
            pos[s] += 1
        r.decode()

    def add_decode() -> None:
        for s in range(a.streams):
            b.add([toks[pos[s]]], pos[s], s, True)

    def add_prompt(p: int) -> None:
        b.add(toks[a.depth: a.depth + p], a.depth, long_seq, True)

    def timed() -> float:
        t = time.perf_counter()
        if r.decode() != 0:
            raise SystemExit("llama_decode failed: lower --streams/--history/--depth")
        return time.perf_counter() - t

    def restore() -> None:
        for s in range(a.streams):
            r.seq_rm(s, pos[s], -1)
        r.seq_rm(long_seq, a.depth, -1)

    def one_call(p: int, decode_first: bool) -> float:
        b.clear()
        for add in ([add_decode, lambda: add_prompt(p)] if decode_first else [lambda: add_prompt(p), add_decode]):
            add()
        dt = timed()
        restore()
        return dt

    def two_calls(p: int) -> float:
        b.clear()
        add_prompt(p)
        dt = timed()
        b.clear()
        add_decode()
        dt += timed()
        restore()
        return dt

    def median(f: Callable[..., float], *args: object) -> float:
        return statistics.median(f(*args) for _ in range(3))

    def decode_only() -> float:
        b.clear()
        add_decode()
        dt = timed()
        restore()
        return dt

    base = median(decode_only)
    print(f"{a.streams} streams x {a.history} tokens, a prompt {a.depth} tokens deep; decode-only step {base:.3f} s")
    print("| prompt tokens | rows | one call, decode first | one call, prompt first | prompt call + decode call |")
    print("|---:|---:|---:|---:|---:|")
    for p in sizes:
        cells = [median(one_call, p, True), median(one_call, p, False), median(two_calls, p)]
        print(f"| {p} | {p + a.streams} | " + " | ".join(f"{c:.3f} s" for c in cells) + " |")


if __name__ == "__main__":
    main()
