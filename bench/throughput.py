"""Decode throughput of a running (or freshly started) qwenhost: single stream and N concurrent streams.

    .venv/bin/python bench/throughput.py --model qwen2.5-coder:1.5b --streams 1 8 --max-tokens 256

Every request ignores EOS, so it generates exactly max_tokens; token counts come from usage.
Single-stream decode tok/s = (tokens - 1) / (time of last token - time of first token).
Aggregate tok/s = all generated tokens / wall time from first request sent to last token received.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import statistics
import subprocess
import sys
import time

import httpx

sys.path.insert(0, ".")
from tests.conftest import free_port  # noqa: E402

PROMPTS = [
    "Write a detailed essay about the history of computing.",
    "Explain, step by step, how a compiler turns source code into machine code.",
    "Describe the water cycle for a curious ten-year-old, in depth.",
    "Tell a long story about a lighthouse keeper and a storm.",
    "List and explain twenty common Python idioms with examples.",
    "Discuss the trade-offs between SQL and NoSQL databases at length.",
    "Write a travel guide for a week in Kyoto.",
    "Explain how public-key cryptography works, with an example.",
]


def one_stream(base: str, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    stamps: list[float] = []
    usage = None
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=None) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            if obj.get("usage"):
                usage = obj["usage"]
            if obj.get("choices") and obj["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
    n = usage["completion_tokens"] if usage else len(stamps)
    return {"t0": t0, "first": stamps[0], "last": stamps[-1], "tokens": n, "ttft": stamps[0] - t0}


def run(base: str, model: str, streams: int, max_tokens: int) -> dict:
    with cf.ThreadPoolExecutor(streams) as pool:
        res = list(pool.map(lambda i: one_stream(base, model, PROMPTS[i % len(PROMPTS)], max_tokens),
                            range(streams)))
    wall = max(r["last"] for r in res) - min(r["t0"] for r in res)
    total = sum(r["tokens"] for r in res)
    per_stream = [(r["tokens"] - 1) / (r["last"] - r["first"]) for r in res if r["last"] > r["first"]]
    return {"streams": streams, "tokens": total, "wall_s": round(wall, 2),
            "aggregate_tok_s": round(total / wall, 2),
            "decode_tok_s_per_stream_median": round(statistics.median(per_stream), 2),
            "decode_tok_s_sum": round(sum(per_stream), 2),
            "ttft_p50_s": round(statistics.median(r["ttft"] for r in res), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder:1.5b")
    ap.add_argument("--url", help="use a running server instead of starting one")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--parallel", type=int, default=16)
    args = ap.parse_args()
    proc = None
    base = args.url
    if base is None:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "qwenhost", "serve", "--model", args.model, "--port",
                                 str(port), "--parallel", str(args.parallel), "--log-level", "warning"])
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    try:
        one_stream(base, args.model, "warm up", 8)
        for n in args.streams:
            print(json.dumps(run(base, args.model, n, args.max_tokens)), flush=True)
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
