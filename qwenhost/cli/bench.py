"""`qwenhost bench`: qwenhost against llama-server on the same model file, machine, threads and context.

Each workload runs against each server in turn, on a fresh server each time; the llama.cpp ceilings
(llama-bench, llama-batched-bench) are measured in the same invocation. Progress goes to stderr, the
results table to stdout, and results.json, report.md and the PNG plots to --out.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from qwenhost.engine.catalog import DEFAULT_MODEL

err = Console(stderr=True, highlight=False, soft_wrap=True)


def _split(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise typer.BadParameter(f"unknown {what} {', '.join(bad) or '(none given)'}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def bench(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Catalog alias, GGUF path or hf:ORG/REPO/FILE.gguf"),
    workloads: str = typer.Option("single,streams-8,streams-16,chat,interference",
                                  help="Comma-separated workloads to run"),
    peers: str = typer.Option("qwenhost,llama-server,llama-server-kvu",
                              help="Comma-separated servers: qwenhost, llama-server, llama-server-kvu (--kv-unified), "
                                   "qwenhost-per-seq (qwenhost --kv-layout per-sequence)"),
    ceilings: bool = typer.Option(True, "--ceilings/--no-ceilings",
                                  help="Also measure llama-bench pp512/tg128 and llama-batched-bench at 8 and 16"),
    threads: int = typer.Option(2, min=1, help="Compute threads, for every server and tool"),
    ctx_size: int = typer.Option(32768, min=256, help="KV cache tokens (-c) for every server"),
    parallel: int = typer.Option(16, min=1, help="Sequences decoded together (-np) for every server"),
    seed: int = typer.Option(0, help="Seed of the generated prompts"),
    out: Path | None = typer.Option(None, help="Output folder (default: bench/results/<timestamp>/ under the "
                                               "current directory)"),
    scale: float = typer.Option(1.0, min=0.01, max=10.0,
                                help="Multiplies prompt/output lengths and chat turns (e.g. 0.1 for a quick run); "
                                     "stream and user counts stay as defined"),
    repeat: int = typer.Option(1, min=1, max=20,
                               help="Runs of each workload per server, the peers alternating; figures, ratios and "
                                    "targets then use the medians (the issue's ±10 % noise needs 3 or more)"),
) -> None:
    """Benchmark qwenhost against llama-server: throughput, latency and memory, with ratios and targets."""
    from qwenhost.bench.harness import PEERS, BenchOptions, run_bench
    from qwenhost.bench.report import write_outputs
    from qwenhost.bench.workloads import WORKLOADS
    from qwenhost.engine.sources import ModelSourceError, resolve_model

    chosen_workloads = _split(workloads, WORKLOADS, "workload")
    chosen_peers = _split(peers, PEERS, "peer")
    try:
        model_path = resolve_model(model)
    except ModelSourceError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    out_dir = out or Path.cwd() / "bench" / "results" / time.strftime("%Y%m%d-%H%M%S")
    opts = BenchOptions(model_path=model_path, model_ref=model, out=out_dir, workloads=chosen_workloads,
                        peers=chosen_peers, ceilings=ceilings, threads=threads, ctx_size=ctx_size,
                        parallel=parallel, seed=seed, scale=scale, repeat=repeat)
    times = f", {repeat} runs each" if repeat > 1 else ""
    err.print(f"qwenhost bench: {', '.join(chosen_workloads)} against {', '.join(chosen_peers)}{times}; "
              f"output in {out_dir}")
    try:
        doc = run_bench(opts)
    except Exception as exc:  # a failed build or prompt setup: say what, not a traceback
        err.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from exc
    text, pngs, note = write_outputs(doc, out_dir)
    sys.stdout.write(text)
    sys.stdout.flush()
    if note:
        err.print(note, markup=False)
    err.print(f"wrote {out_dir / 'results.json'}, {out_dir / 'report.md'}"
              + "".join(f", {p}" for p in pngs), markup=False)
