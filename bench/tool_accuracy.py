"""Tool-use accuracy: the same cases through qwenhost and through llama-server --jinja, same GGUF file.

    .venv/bin/python bench/tool_accuracy.py --model qwen2.5-coder:1.5b
    .venv/bin/python bench/tool_accuracy.py --only qwenhost --limit 3      # smoke test: 3 cases per category

Each case (bench/tool_cases.jsonl, one JSON object a line) has ``id``, ``category`` (single | choose |
parallel | none), ``tools`` (OpenAI tool definitions), ``messages`` and ``expected`` (a list of
``{"name", "arguments"}``). Every case is sent once with the official ``openai`` SDK: temperature 0,
tool_choice "auto", parallel_tool_calls true (OpenAI's default, sent explicitly to both servers),
max_tokens 256, 4 requests in flight against either server. The servers run one after the other.

Scoring (a case is correct or not; there is no partial credit):

* The reply's tool calls must match ``expected`` as a multiset: same number of calls, and each expected
  call paired with a different actual call, in any order. Text content is ignored.
  ``none`` cases are correct exactly when the reply has no tool call.
* A call matches when the name is equal and every expected argument matches. Arguments the model adds
  beyond ``expected`` (optional parameters the case does not pin) are ignored. Arguments that are not a
  JSON object are a wrong call.
* Values: strings are compared trimmed, case-insensitively, with runs of whitespace collapsed; numbers
  numerically (``5`` == ``5.0`` == ``"5"``); booleans exactly; lists element-wise; objects recursively.
* Markers in ``expected``: ``"$any"`` (the argument must be present, any value), ``{"$oneof": [...]}``
  (any alternative matches, e.g. "Denver" or "DEN"), ``{"$re": "..."}`` (a case-insensitive full match
  of the trimmed string form, for free text such as SQL or expressions).
* A case with ``"match": "name_only"`` compares only the tool names (free-text arguments such as a
  search query, whose wording cannot be expected).
* An HTTP error or a timeout is a wrong answer.

llama-server is built once from the llama.cpp sources vendored in the llama-cpp-python sdist (the
version qwenhost uses), into ``~/.cache/qwenhost/llama.cpp-<version>/`` (reused when present), and
started as ``llama-server -m MODEL --jinja -c 8192 -np 4 -t 2 --port P``; qwenhost as
``qwenhost serve --model MODEL --port P --parallel 4 --ctx-size 8192 --threads 2``.
Results (per-case raw outputs of both) go to ``bench/results/tool_accuracy-<time>.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from qwenhost.bench.peers import build_llama_server, free_port, pinned_llama_cpp_python

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = ("single", "choose", "parallel", "none")
SERVERS = ("qwenhost", "llama-server")
LLAMA_CPP_PYTHON = pinned_llama_cpp_python()


# ---------------------------------------------------------------- scoring

def _norm(s: str) -> str:
    return " ".join(s.split()).casefold()


def _as_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def value_matches(expected: Any, actual: Any) -> bool:
    """Whether one argument value matches its expectation (see the module docstring)."""
    if expected == "$any":
        return True
    if isinstance(expected, dict) and "$oneof" in expected:
        return any(value_matches(alt, actual) for alt in expected["$oneof"])
    if isinstance(expected, dict) and "$re" in expected:
        text = actual if isinstance(actual, str) else json.dumps(actual)
        return re.fullmatch(expected["$re"], text.strip(), re.IGNORECASE | re.DOTALL) is not None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float):
        got = _as_number(actual)
        return got is not None and math.isclose(float(expected), got, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(expected, str):
        if isinstance(actual, str):
            return _norm(expected) == _norm(actual)
        num = _as_number(expected)
        return num is not None and value_matches(num, actual)
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(actual) == len(expected)
                and all(value_matches(e, a) for e, a in zip(expected, actual, strict=True)))
    if isinstance(expected, dict):
        return isinstance(actual, dict) and args_match(expected, actual)
    return expected == actual


def args_match(expected: dict[str, Any], actual: dict[str, Any]) -> bool:
    """Every expected argument is present and matches; extra actual arguments are ignored."""
    return all(k in actual and value_matches(v, actual[k]) for k, v in expected.items())


def _parse_calls(calls: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any] | None]]:
    out: list[tuple[str, dict[str, Any] | None]] = []
    for c in calls:
        try:
            args = json.loads(c["arguments"]) if isinstance(c["arguments"], str) else c["arguments"]
        except (json.JSONDecodeError, TypeError):
            args = None
        out.append((c["name"], args if isinstance(args, dict) else None))
    return out


def calls_match(expected: list[dict[str, Any]], actual: list[dict[str, Any]], name_only: bool = False) -> bool:
    """Multiset match of expected calls against the reply's calls, in any order."""
    got = _parse_calls(actual)
    if len(got) != len(expected):
        return False

    def ok(e: dict[str, Any], a: tuple[str, dict[str, Any] | None]) -> bool:
        if e["name"] != a[0]:
            return False
        return name_only or (a[1] is not None and args_match(e["arguments"], a[1]))

    def assign(i: int, used: frozenset[int]) -> bool:
        if i == len(expected):
            return True
        return any(j not in used and ok(expected[i], got[j]) and assign(i + 1, used | {j}) for j in range(len(got)))

    return assign(0, frozenset())


def score(case: dict[str, Any], out: dict[str, Any]) -> bool:
    """Whether a server's output for a case is correct."""
    if out.get("error"):
        return False
    return calls_match(case["expected"], out["tool_calls"], case.get("match") == "name_only")


# ---------------------------------------------------------------- servers

def server_command(which: str, model: str, model_path: Path, binary: Path | None, port: int,
                   parallel: int, threads: int) -> list[str]:
    """The command line that starts one of the two servers."""
    if which == "qwenhost":
        return [sys.executable, "-m", "qwenhost", "serve", "--model", model, "--port", str(port),
                "--parallel", str(parallel), "--ctx-size", "8192", "--threads", str(threads),
                "--log-level", "warning"]
    assert binary is not None
    from qwenhost.bench.peers import no_repack_args
    from qwenhost.engine.runner import extra_buffers_enabled

    return [str(binary), "-m", str(model_path), "--jinja", "-c", "8192", "-np", str(parallel),
            "-t", str(threads), "--port", str(port), *no_repack_args(extra_buffers_enabled())]


def start_server(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start a server and wait until /health answers 200."""
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"server not healthy after 900 s; see {log}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- running

def ask(client: OpenAI, model: str, case: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """One case through one server; the raw reply as a plain dict."""
    t0 = time.perf_counter()
    try:
        r = client.chat.completions.create(
            model=model, messages=case["messages"], tools=case["tools"], tool_choice="auto",
            parallel_tool_calls=True, temperature=0, max_tokens=max_tokens)
    except Exception as exc:  # noqa: BLE001 - any failure is a wrong answer, recorded verbatim
        return {"error": f"{type(exc).__name__}: {exc}", "tool_calls": [], "content": None,
                "seconds": round(time.perf_counter() - t0, 2)}
    choice = r.choices[0]
    calls = [{"name": tc.function.name, "arguments": tc.function.arguments}
             for tc in choice.message.tool_calls or [] if tc.type == "function"]
    return {"content": choice.message.content, "tool_calls": calls, "finish_reason": choice.finish_reason,
            "completion_tokens": r.usage.completion_tokens if r.usage else None,
            "seconds": round(time.perf_counter() - t0, 2)}


def run_cases(base_url: str, model: str, cases: list[dict[str, Any]], concurrency: int, max_tokens: int,
              label: str) -> list[dict[str, Any]]:
    """All cases against one server, ``concurrency`` requests in flight; outputs in case order."""
    client = OpenAI(base_url=base_url, api_key="unused", timeout=900, max_retries=0)
    done = 0
    lock = threading.Lock()

    def one(case: dict[str, Any]) -> dict[str, Any]:
        nonlocal done
        out = ask(client, model, case, max_tokens)
        out["correct"] = score(case, out)
        with lock:
            done += 1
            mark = "ok " if out["correct"] else "BAD"
            print(f"  [{label} {done:3d}/{len(cases)}] {mark} {case['id']} ({out['seconds']} s)", flush=True)
        return out

    with cf.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, cases))


def table(cases: list[dict[str, Any]], results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown table: per category, cases and correct answers of each server."""
    servers = [s for s in SERVERS if s in results]
    lines = ["| category | cases | " + " | ".join(f"{s} correct" for s in servers) + " |",
             "|---|---:|" + "---:|" * len(servers)]
    groups: list[tuple[str, Callable[[dict[str, Any]], bool]]] = [
        (c, lambda case, c=c: case["category"] == c) for c in CATEGORIES]
    groups.append(("**all**", lambda case: True))
    for name, keep in groups:
        idx = [i for i, case in enumerate(cases) if keep(case)]
        if not idx:
            continue
        cells = []
        for s in servers:
            k = sum(results[s][i]["correct"] for i in idx)
            cells.append(f"{k} ({100 * k / len(idx):.0f}%)")
        lines.append(f"| {name} | {len(idx)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_cases(path: Path, limit: int | None) -> list[dict[str, Any]]:
    """Read the JSONL cases; ``limit`` keeps the first N of each category."""
    cases = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    bad = [c.get("id") for c in cases if c.get("category") not in CATEGORIES]
    if bad:
        raise SystemExit(f"unknown category in cases {bad}")
    if limit is not None:
        seen: dict[str, int] = {}
        kept = []
        for c in cases:
            seen[c["category"]] = seen.get(c["category"], 0) + 1
            if seen[c["category"]] <= limit:
                kept.append(c)
        cases = kept
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder:1.5b", help="qwenhost model reference (alias or GGUF path)")
    ap.add_argument("--only", choices=SERVERS, help="run one server only")
    ap.add_argument("--limit", type=int, help="at most N cases per category")
    ap.add_argument("--cases", type=Path, default=ROOT / "bench" / "tool_cases.jsonl")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight (and server slots)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--llama-cpp-python", default=LLAMA_CPP_PYTHON, help="sdist whose llama.cpp to build")
    ap.add_argument("--llama-server", type=Path, help="use this llama-server binary instead of building one")
    ap.add_argument("--cache-dir", type=Path, help="default ~/.cache/qwenhost/llama.cpp-<version>")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from qwenhost.engine.sources import resolve_model

    cases = load_cases(args.cases, args.limit)
    model_path = resolve_model(args.model, progress=True)
    servers = [args.only] if args.only else list(SERVERS)
    binary = None
    if "llama-server" in servers:
        cache = args.cache_dir or Path.home() / ".cache" / "qwenhost" / f"llama.cpp-{args.llama_cpp_python}"
        binary = args.llama_server or build_llama_server(args.llama_cpp_python, cache)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, list[dict[str, Any]]] = {}
    meta: dict[str, Any] = {"model": args.model, "model_path": str(model_path), "cases_file": str(args.cases),
                            "n_cases": len(cases), "concurrency": args.concurrency, "max_tokens": args.max_tokens,
                            "llama_cpp_python": args.llama_cpp_python, "started": stamp, "servers": {}}
    for which in servers:
        port = free_port()
        cmd = server_command(which, args.model, model_path, binary, port, args.concurrency, args.threads)
        log = out_dir / f"tool_accuracy-{stamp}-{which}.log"
        t_start = time.perf_counter()
        proc = start_server(cmd, port, log)
        t_ready = time.perf_counter()
        try:
            print(f"{which}: {len(cases)} cases, {args.concurrency} in flight", flush=True)
            model_name = args.model if which == "qwenhost" else model_path.name
            results[which] = run_cases(f"http://127.0.0.1:{port}/v1", model_name, cases, args.concurrency,
                                       args.max_tokens, which)
        finally:
            stop_server(proc)
        meta["servers"][which] = {"command": cmd, "startup_s": round(t_ready - t_start, 1),
                                  "cases_s": round(time.perf_counter() - t_ready, 1), "log": str(log)}
        print(f"{which}: cases took {meta['servers'][which]['cases_s']} s", flush=True)

    per_case = [{"id": c["id"], "category": c["category"], "expected": c["expected"],
                 **{s: results[s][i] for s in results}} for i, c in enumerate(cases)]
    md = table(cases, results)
    path = out_dir / f"tool_accuracy-{stamp}.json"
    path.write_text(json.dumps({"meta": meta, "table_markdown": md, "cases": per_case}, indent=1,
                               ensure_ascii=False))
    print()
    print(md)
    print(f"\nper-case outputs: {path}")


if __name__ == "__main__":
    main()
