"""Interference, in-process: N streams decode while one long prompt arrives; how long do they pause?

    .venv/bin/python bench/interference.py --model qwen2.5-coder:0.5b --itl-target 0.5 1.0 100

For each --itl-target (seconds per step the scheduler aims for while streams decode; 100 = no limit, so
prompt chunks of --prefill-chunk tokens) prints the streams' largest gap and p95 gap between tokens,
and the long prompt's time to first token. Greedy, EOS ignored, one engine per target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from qwenhost.engine.engine import Engine, EngineConfig
from qwenhost.engine.sampling import SamplingParams
from qwenhost.engine.sequence import GenerationRequest
from qwenhost.engine.sources import resolve_model

GREEDY = SamplingParams(temperature=0)


async def _stream(engine: Engine, i: int, gaps: list[float], n: int) -> None:
    prompt = engine.tokenize(f"<|im_start|>user\nTell story number {i}.<|im_end|>\n<|im_start|>assistant\n")
    last = None
    async for _ in engine.generate(GenerationRequest(prompt, n, GREEDY, ignore_eos=True)):
        now = time.perf_counter()
        if last is not None:
            gaps.append(now - last)
        last = now


async def _long(engine: Engine, words: int, delay: float) -> float:
    await asyncio.sleep(delay)
    t0 = time.perf_counter()
    async for out in engine.generate(GenerationRequest(engine.tokenize("word " * words), 4, GREEDY)):
        if out.n_tokens:
            return time.perf_counter() - t0
    raise RuntimeError("the long prompt produced no token")


def run(model: str, target: float, streams: int, words: int, max_tokens: int) -> dict:
    engine = Engine(EngineConfig(model_path=resolve_model(model, progress=False), ctx_size=16384,
                                 parallel=streams + 1, itl_target_s=target))
    try:
        gaps: list[float] = []

        async def main() -> float:
            results = await asyncio.gather(*[_stream(engine, i, gaps, max_tokens) for i in range(streams)],
                                           _long(engine, words, 1.0))
            return results[-1]

        ttft = asyncio.run(main())
    finally:
        engine.close()
    gaps.sort()
    return {"itl_target_s": target, "streams": streams, "long_prompt_words": words, "max_gap_s": round(gaps[-1], 2),
            "p95_gap_s": round(gaps[int(len(gaps) * 0.95)], 2), "long_ttft_s": round(ttft, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder:0.5b")
    ap.add_argument("--itl-target", type=float, nargs="+", default=[0.5, 1.0, 100.0])
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--long-words", type=int, default=1500)
    ap.add_argument("--max-tokens", type=int, default=120)
    args = ap.parse_args()
    for t in args.itl_target:
        print(json.dumps(run(args.model, t, args.streams, args.long_words, args.max_tokens)), flush=True)


if __name__ == "__main__":
    main()
