"""What the model writes, unparsed and unconstrained, for tool-accuracy cases (a diagnostic aid).

    .venv/bin/python bench/tool_raw.py parallel-01 none-02            # starts qwenhost on a free port
    .venv/bin/python bench/tool_raw.py --url http://127.0.0.1:8642 single-03
    .venv/bin/python bench/tool_raw.py --failed bench/results/tool_accuracy-X.json   # every qwenhost miss

The chat is rendered with the model file's own template (as qwenhost does for /v1/chat/completions)
and sent to /v1/completions with temperature 0, so no tool parser and no grammar touch the text.
Raw text differs from the chat reply only where the chat endpoint's lazy grammar steered a call.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tool_accuracy import free_port, load_cases, server_command, start_server, stop_server  # noqa: E402


def raw_text(base: str, model: str, prompt: str, max_tokens: int) -> str:
    """Greedy completion of an already-rendered prompt."""
    r = httpx.post(base + "/v1/completions", timeout=900, json={
        "model": model, "prompt": prompt, "temperature": 0, "max_tokens": max_tokens})
    r.raise_for_status()
    return r.json()["choices"][0]["text"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ids", nargs="*", help="case ids")
    ap.add_argument("--failed", type=Path, help="a results JSON: show every case qwenhost got wrong")
    ap.add_argument("--model", default="qwen2.5-coder:1.5b")
    ap.add_argument("--url", help="a running qwenhost serving --model")
    ap.add_argument("--cases", type=Path, default=ROOT / "bench" / "tool_cases.jsonl")
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()

    from qwenhost.engine.gguf_info import read_gguf_info
    from qwenhost.engine.sources import resolve_model
    from qwenhost.qwen.template import render_chat

    ids = list(args.ids)
    if args.failed:
        ids += [c["id"] for c in json.loads(args.failed.read_text())["cases"]
                if "qwenhost" in c and not c["qwenhost"]["correct"]]
    by_id = {c["id"]: c for c in load_cases(args.cases, None)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SystemExit(f"unknown case ids: {missing}")
    path = resolve_model(args.model)
    template = read_gguf_info(path).chat_template or ""
    proc = None
    base = args.url
    if base is None:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = ROOT / "bench" / "results" / "tool_raw-qwenhost.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        proc = start_server(server_command("qwenhost", args.model, path, None, port, 4, 2), port, log)
    try:
        def one(cid: str) -> str:
            case = by_id[cid]
            prompt = render_chat(template, case["messages"], tools=case["tools"]).text
            return raw_text(base, args.model, prompt, args.max_tokens)

        with cf.ThreadPoolExecutor(4) as pool:
            for cid, text in zip(ids, pool.map(one, ids), strict=True):
                print(f"=== {cid}  expected: {json.dumps(by_id[cid]['expected'])}")
                print(text, flush=True)
    finally:
        if proc:
            stop_server(proc)


if __name__ == "__main__":
    main()
