"""Orchestration: ceilings, then every (peer, workload) pair on a fresh server, one after the other."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from qwenhost.bench import peers as peer_procs
from qwenhost.bench import repeats, runner, workloads
from qwenhost.bench.client import ChatClient
from qwenhost.bench.stats import RequestRecord
from qwenhost.engine.runner import extra_buffers_enabled

# qwenhost-per-seq is qwenhost with --kv-layout per-sequence: listed beside the others, never judged by a target.
PEERS = ("qwenhost", "llama-server", "llama-server-kvu", "qwenhost-per-seq")
DEFAULT_PEERS = PEERS[:3]
STREAM_COUNTS = {"streams-8": 8, "streams-16": 16}

Say = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class BenchOptions:
    model_path: Path
    model_ref: str
    out: Path
    workloads: Sequence[str] = workloads.WORKLOADS
    peers: Sequence[str] = DEFAULT_PEERS
    ceilings: bool = True
    threads: int = 2
    ctx_size: int = 32768
    parallel: int = 16
    seed: int = 0
    scale: float = 1.0
    repeat: int = 1
    llama_cpp_python: str = field(default_factory=peer_procs.pinned_llama_cpp_python)
    cache_dir: Path | None = None


def _record_json(rec: RequestRecord, t0: float) -> dict[str, Any]:
    """A request's timeline relative to the workload's start, to the 0.1 ms (for plots and re-analysis)."""
    return {"send": round(rec.send - t0, 4), "chunks": [round(t - t0, 4) for t in rec.chunks],
            "completion_tokens": rec.completion_tokens, "prompt_tokens": rec.prompt_tokens,
            "cached_tokens": rec.cached_tokens,
            "chunk_tokens": rec.chunk_tokens, "max_tokens": rec.max_tokens, "error": rec.error}


def _timelines(raw: Any, t0: float) -> Any:
    if isinstance(raw, RequestRecord):
        return _record_json(raw, t0)
    if isinstance(raw, dict):
        return {k: _timelines(v, t0) for k, v in raw.items()}
    return [_timelines(v, t0) for v in raw]


class Plans:
    """Every workload's requests, built once so each peer gets byte-identical prompts."""

    def __init__(self, opts: BenchOptions) -> None:
        maker = workloads.PromptMaker(opts.model_path, opts.seed)
        self.count_tokens = maker.count_output
        s = opts.scale
        self.single = workloads.single(maker, s) if "single" in opts.workloads else None
        self.streams = {n: workloads.streams(maker, n, s) for w, n in STREAM_COUNTS.items() if w in opts.workloads}
        self.chat = workloads.chat(maker, s) if "chat" in opts.workloads else None
        self.interference = workloads.interference(maker, s) if "interference" in opts.workloads else None

    def run(self, name: str, client: ChatClient) -> tuple[dict[str, Any], Any]:
        if name == "single":
            assert self.single is not None
            return runner.run_single(client, self.single)
        if name in STREAM_COUNTS:
            return runner.run_streams(client, self.streams[STREAM_COUNTS[name]])
        if name == "chat":
            assert self.chat is not None
            return runner.run_chat(client, self.chat)
        assert self.interference is not None
        return runner.run_interference(client, self.interference)


def _server_command(peer: str, opts: BenchOptions, tools: dict[str, Path], port: int) -> list[str]:
    if peer in ("qwenhost", "qwenhost-per-seq"):
        return peer_procs.qwenhost_command(opts.model_path, port, opts.parallel, opts.ctx_size, opts.threads,
                                           kv_layout="per-sequence" if peer == "qwenhost-per-seq" else "unified")
    return peer_procs.llama_server_command(tools["llama-server"], opts.model_path, port, opts.parallel, opts.ctx_size,
                                           opts.threads, kv_unified=peer == "llama-server-kvu",
                                           extra_buffers=extra_buffers_enabled())


def run_ceilings(opts: BenchOptions, tools: dict[str, Path], say: Say) -> dict[str, Any]:
    """llama-bench pp512/tg128 and llama-batched-bench at 8 and 16 sequences, same sources and threads."""
    out: dict[str, Any] = {"extra_buffers": extra_buffers_enabled()}
    logs = opts.out / "logs"
    reps = 5 if opts.scale >= 1 else 1
    say(f"ceilings: llama-bench pp512/tg128 ({reps} repetition(s)) ...")
    try:
        out["llama_bench"] = peer_procs.run_llama_bench(tools["llama-bench"], opts.model_path, opts.threads, reps,
                                                        logs / "llama-bench.log", out["extra_buffers"])
    except (RuntimeError, ValueError, KeyError) as exc:
        out["llama_bench_error"] = str(exc)
    say("ceilings: llama-batched-bench at 8 and 16 sequences ...")
    binary, counts = tools["llama-batched-bench"], (8, 16)
    out["batched_bench_command"] = peer_procs.batched_bench_command(binary, opts.model_path, opts.threads,
                                                                    opts.ctx_size, counts, out["extra_buffers"])
    try:
        parsed = peer_procs.run_batched_bench(binary, opts.model_path, opts.threads, opts.ctx_size, counts,
                                              logs / "llama-batched-bench.log", out["extra_buffers"])
        out["batched_bench"] = {str(k): v for k, v in parsed.items()}
    except (RuntimeError, ValueError) as exc:
        out["batched_bench_error"] = str(exc)
    return out


def run_one(peer: str, workload: str, plans: Plans, opts: BenchOptions, tools: dict[str, Path],
            db_dir: Path, say: Say, rep: int = 0) -> dict[str, Any]:
    """A fresh server for one workload: start, warm up, run, read its peak RSS, stop."""
    port = peer_procs.free_port()
    cmd = _server_command(peer, opts, tools, port)
    # Repeats get their own log and database; a single run keeps the plain names.
    name = f"{peer}-{workload}" + (f"-r{rep + 1}" if opts.repeat > 1 else "")
    label = f"{peer} / {workload}" + (f" (run {rep + 1} of {opts.repeat})" if opts.repeat > 1 else "")
    # An empty gateway database of its own: no keys, so auth stays off on loopback and nothing is metered
    # into the user's ledger.
    env = {"QWENHOST_DATABASE_URL": f"sqlite:///{db_dir / f'{name}.db'}", "PYTHONUNBUFFERED": "1"}
    log = opts.out / "logs" / f"{name}.log"
    result: dict[str, Any] = {"server": {"command": cmd, "log": str(log)}}
    say(f"{label}: starting server ...")
    try:
        with peer_procs.ServerProcess(cmd, port, log, env=env) as srv:
            result["server"]["startup_s"] = round(srv.startup_s, 2)
            with ChatClient(srv.base, count_tokens=plans.count_tokens) as client:
                runner.warm_up(client)
                say(f"{label}: running ...")
                t0, cpu0 = time.perf_counter(), time.process_time()
                metrics, raw = plans.run(workload, client)
                # The bench process's own CPU over the run: evidence the client was not the bottleneck.
                result["client_cpu_share"] = round((time.process_time() - cpu0) / (time.perf_counter() - t0), 4)
                result["server"]["peak_rss_mib"] = round(srv.peak_rss_mib(), 1)
                # The server's own counters after the run (step kinds and times, cache hits) explain its figures.
                scrape = opts.out / "logs" / f"{name}.metrics.txt"
                if srv.save_metrics(scrape):
                    result["server"]["metrics_file"] = str(scrape)
            result["metrics"] = metrics
            result["timelines"] = _timelines(raw, t0)
    except (RuntimeError, OSError, httpx.HTTPError, LookupError, ValueError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        say(f"{label}: FAILED: {exc}")
        return result
    if workload == "chat":
        result["metrics"]["peak_rss_mib"] = result["server"]["peak_rss_mib"]
    brief = ", ".join([f"{k}={v:.3g}" for k, v in metrics.items() if isinstance(v, float)]
                      + [f"client CPU {100 * result['client_cpu_share']:.1f}% of one core"])
    say(f"{label}: {brief}" + (f" ({metrics['failed']} failed: {metrics['first_error']})"
                                            if metrics["failed"] else ""))
    return result


def run_bench(opts: BenchOptions, say: Say = _stderr) -> dict[str, Any]:
    """The whole bench; returns the results document (what results.json holds)."""
    (opts.out / "logs").mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tools: dict[str, Path] = {}
    needs = (["llama-server"] if any(p != "qwenhost" for p in opts.peers) else []) + \
        (["llama-bench", "llama-batched-bench"] if opts.ceilings else [])
    if needs:
        cache = opts.cache_dir or peer_procs.default_cache(opts.llama_cpp_python)
        say(f"llama.cpp tools from llama-cpp-python {opts.llama_cpp_python}'s sources, in {cache} "
            "(built on first use: about 10-20 minutes on 2 cores)")
        tools = peer_procs.build_llama_tools(opts.llama_cpp_python, cache, needs, say)
    say("building the prompts ...")
    plans = Plans(opts)
    doc: dict[str, Any] = {
        "meta": {**{k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                    for k, v in asdict(opts).items()},
                 "started": started, "host": platform.node(), "machine": platform.machine(),
                 "cpus": os.cpu_count(), "python": platform.python_version(),
                 "tools": {k: str(v) for k, v in tools.items()}},
        "ceilings": run_ceilings(opts, tools, say) if opts.ceilings else {},
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="qwenhost-bench-") as db_dir:
        # Workload by workload, the peers back to back: a comparison's two halves run minutes apart, not an
        # hour; with --repeat the peers alternate (see repeats.schedule) and the medians stand for the runs.
        done: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for workload, rep, peer in repeats.schedule(opts.workloads, opts.peers, opts.repeat):
            done.setdefault((peer, workload), []).append(
                run_one(peer, workload, plans, opts, tools, Path(db_dir), say, rep))
        doc["runs"] = {peer: {w: repeats.combine(w, done[(peer, w)]) for w in opts.workloads}
                       for peer in opts.peers}
    doc["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return doc
