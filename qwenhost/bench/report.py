"""From a results document to tables, ratios, target pass/fail, results.json, report.md and plots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenhost.bench.repeats import is_number

MAIN_PEER = "llama-server"
LLAMA_PEERS = ("llama-server", "llama-server-kvu")

# (workload, metric key, label, format)
METRICS: list[tuple[str, str, str, str]] = [
    ("single", "decode_tok_s", "decode tok/s", "{:.2f}"),
    ("single", "ttft_s", "TTFT s", "{:.3f}"),
    *[(w, k, label, f) for w in ("streams-8", "streams-16") for k, label, f in (
        ("aggregate_tok_s", "aggregate tok/s", "{:.2f}"),
        ("steady_decode_tok_s", "steady batched decode tok/s", "{:.2f}"),
        ("ttft_p50_s", "TTFT p50 s", "{:.3f}"),
        ("wall_s", "wall s", "{:.1f}"))],
    ("chat", "total_s", "total s", "{:.1f}"),
    ("chat", "turn0_ttft_p50_s", "turn-0 TTFT p50 s", "{:.3f}"),
    ("chat", "ttft_p50_s", "TTFT p50 s (all turns)", "{:.3f}"),
    ("chat", "later_ttft_p50_s", "TTFT p50 s (turns 1-5)", "{:.3f}"),
    ("chat", "cached_share", "prompt tokens from cache", "{:.0%}"),
    ("chat", "peak_rss_mib", "peak RSS MiB", "{:.0f}"),
    ("interference", "itl_p95_undisturbed_s", "ITL p95 undisturbed s", "{:.3f}"),
    ("interference", "itl_p95_prefill_s", "ITL p95 during long prefill s", "{:.3f}"),
    ("interference", "itl_ratio", "ITL p95 ratio (prefill/undisturbed)", "{:.2f}"),
    ("interference", "long_ttft_s", "long prompt TTFT s", "{:.2f}"),
]


@dataclass(frozen=True)
class Target:
    label: str
    workload: str
    metric: str
    op: str  # ">=" or "<=" on qwenhost / reference
    factor: float
    ref: tuple[str, ...] | None  # ("peer", metric) | ("ceiling", group, key) | None: the value itself
    both_configs: bool = False  # judged against both llama-server configs, not only the main one


TARGETS: list[Target] = [
    Target("single decode ≥ 0.95× llama-server", "single", "decode_tok_s", ">=", 0.95, ("peer", "decode_tok_s")),
    Target("single decode ≥ 0.85× llama-bench tg128", "single", "decode_tok_s", ">=", 0.85,
           ("ceiling", "llama_bench", "tg128")),
    *[t for n in (8, 16) for t in (
        Target(f"streams-{n} steady decode ≥ 0.9× batched-bench npl {n}", f"streams-{n}", "steady_decode_tok_s",
               ">=", 0.9, ("ceiling", "batched_bench", str(n))),
        Target(f"streams-{n} steady decode ≥ 1.0× llama-server", f"streams-{n}", "steady_decode_tok_s", ">=", 1.0,
               ("peer", "steady_decode_tok_s")),
        Target(f"streams-{n} aggregate ≥ 1.1× llama-server", f"streams-{n}", "aggregate_tok_s", ">=", 1.1,
               ("peer", "aggregate_tok_s")),
        Target(f"streams-{n} TTFT p50 ≤ 0.75× llama-server", f"streams-{n}", "ttft_p50_s", "<=", 0.75,
               ("peer", "ttft_p50_s")))],
    Target("chat total time ≤ 0.5× llama-server (≥ 2× faster)", "chat", "total_s", "<=", 0.5,
           ("peer", "total_s"), both_configs=True),
    Target("chat peak RSS ≤ llama-server", "chat", "peak_rss_mib", "<=", 1.0, ("peer", "peak_rss_mib")),
    Target("interference ITL p95 ≤ 3× undisturbed", "interference", "itl_ratio", "<=", 3.0, None),
    # Judged against both configs: without --kv-unified, -np 16 -c 32768 gives each llama-server slot 2,048
    # tokens, so the main config refuses the 3,000-token prompt (400) and only the unified one has a TTFT.
    Target("interference long-prompt TTFT ≤ 1.5× llama-server", "interference", "long_ttft_s", "<=", 1.5,
           ("peer", "long_ttft_s"), both_configs=True),
]


def metric(doc: dict[str, Any], peer: str, workload: str, key: str) -> float | None:
    value = doc.get("runs", {}).get(peer, {}).get(workload, {}).get("metrics", {}).get(key)
    return float(value) if is_number(value) else None


def _ceiling(doc: dict[str, Any], group: str, key: str) -> float | None:
    value = doc.get("ceilings", {}).get(group, {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def evaluate_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target and reference: values, ratio, pass/fail; ``counts`` marks the rows the issue
    judges (the main peer's, and both configs' where it asks for both)."""
    rows: list[dict[str, Any]] = []
    peers_run = [p for p in LLAMA_PEERS if p in doc.get("runs", {})]
    for t in TARGETS:
        if t.workload not in doc.get("meta", {}).get("workloads", [t.workload]):
            continue
        mine = metric(doc, "qwenhost", t.workload, t.metric)
        if t.ref is None:
            refs: list[tuple[str, float | None, bool]] = [("(itself)", 1.0, True)]
        elif t.ref[0] == "ceiling":
            refs = [(f"{t.ref[1]} {t.ref[2]}", _ceiling(doc, t.ref[1], t.ref[2]), True)]
        else:
            refs = [(p, metric(doc, p, t.workload, t.ref[1]), p == MAIN_PEER or t.both_configs) for p in peers_run]
        for ref_name, ref, counts in refs:
            ratio = mine / ref if mine is not None and ref else None
            ok = None if ratio is None else ratio >= t.factor if t.op == ">=" else ratio <= t.factor
            rows.append({"target": t.label, "reference": ref_name, "qwenhost": mine,
                         "reference_value": None if t.ref is None else ref, "ratio": ratio,
                         "needed": f"{t.op} {t.factor:g}", "pass": ok, "counts": counts})
    return rows


def _fmt(value: float | None, fmt: str = "{:.3g}") -> str:
    return "—" if value is None else fmt.format(value)


def _table(header: list[str], rows: list[list[str]], align: str) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def metrics_table(doc: dict[str, Any]) -> str:
    peers = list(doc.get("runs", {}))
    rows = []
    for workload, key, label, fmt in METRICS:
        if not any(workload in doc["runs"][p] for p in peers):
            continue
        cells = []
        for p in peers:
            run = doc["runs"][p].get(workload, {})
            cells.append("error" if "error" in run else _fmt(metric(doc, p, workload, key), fmt))
        rows.append([workload, label, *cells])
    return _table(["workload", "metric", *peers], rows, "ll" + "r" * len(peers))


def ceilings_table(doc: dict[str, Any]) -> str:
    c = doc.get("ceilings") or {}
    if not c:
        return "(ceilings not measured: --no-ceilings)"
    lb, bb = c.get("llama_bench", {}), c.get("batched_bench", {})
    rows = [["llama-bench pp512 tok/s", _fmt(lb.get("pp512"), "{:.2f}")],
            ["llama-bench tg128 tok/s", _fmt(lb.get("tg128"), "{:.2f}")],
            ["llama-batched-bench S_TG npl 8 tok/s", _fmt(bb.get("8"), "{:.2f}")],
            ["llama-batched-bench S_TG npl 16 tok/s", _fmt(bb.get("16"), "{:.2f}")]]
    errors = [f"{k}: {v}" for k, v in c.items() if k.endswith("_error")]
    return _table(["ceiling", "value"], rows, "lr") + ("\n\n" + "\n".join(errors) if errors else "")


# workload -> (the metric timing the whole workload, the batched-bench sequence count its decode runs at)
TIMED_WORKLOADS = {"streams-8": ("wall_s", "8"), "streams-16": ("wall_s", "16"), "chat": ("total_s", "16")}


def ceiling_times(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """For every timed workload and server: how long the work that server did takes at the ceiling rates
    measured in the same run, prompt tokens it computed at llama-bench pp512 plus generated tokens at
    llama-batched-bench S_TG for the workload's concurrency, and the server's time as a multiple of that."""
    pp = _ceiling(doc, "llama_bench", "pp512")
    rows = []
    for workload, (time_key, npl) in TIMED_WORKLOADS.items():
        tg = _ceiling(doc, "batched_bench", npl)
        for peer in doc.get("runs", {}):
            took = metric(doc, peer, workload, time_key)
            prompt = metric(doc, peer, workload, "computed_prompt_tokens")
            completion = metric(doc, peer, workload, "completion_tokens")
            if took is None or prompt is None or completion is None or not pp or not tg:
                continue
            floor = prompt / pp + completion / tg
            rows.append({"workload": workload, "peer": peer, "computed_prompt_tokens": int(prompt),
                         "completion_tokens": int(completion), "ceiling_s": floor, "took_s": took,
                         "times_ceiling": took / floor})
    return rows


def ceiling_times_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(needs the ceilings and servers that report cached prompt tokens)"
    body = [[r["workload"], r["peer"], str(r["computed_prompt_tokens"]), str(r["completion_tokens"]),
             _fmt(r["ceiling_s"], "{:.1f}"), _fmt(r["took_s"], "{:.1f}"), _fmt(r["times_ceiling"], "{:.2f}")]
            for r in rows]
    return _table(["workload", "server", "prompt tokens computed", "tokens generated", "at ceiling s", "took s",
                   "× ceiling"], body, "llrrrrr")


def targets_table(rows: list[dict[str, Any]]) -> str:
    def verdict(r: dict[str, Any]) -> str:
        v = "n/a" if r["pass"] is None else "pass" if r["pass"] else "FAIL"
        return v if r["counts"] else f"({v})"

    body = [[r["target"], r["reference"], _fmt(r["qwenhost"]), _fmt(r["reference_value"]),
             _fmt(r["ratio"], "{:.3f}"), r["needed"], verdict(r)] for r in rows]
    return _table(["target", "vs", "qwenhost", "reference", "ratio", "needed", "result"], body, "llrrrll")


def repeats_section(doc: dict[str, Any]) -> str:
    """Every repeat's value beside the median that the tables and targets use."""
    rows = []
    for workload, key, label, _ in METRICS:
        for peer, runs in doc["runs"].items():
            reps = runs.get(workload, {}).get("repeats") or []
            values = [v if is_number(v := r.get("metrics", {}).get(key)) else None for r in reps]
            if all(v is None for v in values):
                continue
            cells = ["error" if "error" in r else _fmt(v) for r, v in zip(reps, values, strict=True)]
            rows.append([workload, label, peer, " / ".join(cells), _fmt(metric(doc, peer, workload, key))])
    n = doc["meta"].get("repeat", 1)
    return (f"## Repeats\n\nEach server ran each workload {n} times, the peers alternating (ABBA). The tables above "
            "show medians and the targets compare medians; here is every run, in the order it ran for that "
            "server.\n\n" + _table(["workload", "metric", "server", "runs", "median"], rows, "lllrr"))


def summary(doc: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    m = doc["meta"]
    repeat = m.get("repeat", 1)
    judged = [r for r in targets if r["counts"] and r["pass"] is not None]
    passed = sum(1 for r in judged if r["pass"])
    missing = sum(1 for r in targets if r["counts"] and r["pass"] is None)
    errors = [f"- {p} / {w}: {run['error']}" for p, runs in doc["runs"].items() for w, run in runs.items()
              if "error" in run]
    errors += [f"- {p} / {w}: {len(run['repeat_errors'])} of {len(run['repeats'])} runs failed and are left out "
               f"of the medians, e.g. {run['repeat_errors'][0]}" for p, runs in doc["runs"].items()
               for w, run in runs.items() if run.get("repeat_errors")]
    failed_reqs = [f"- {p} / {w}: {run['metrics']['failed']} request(s) failed, e.g. {run['metrics']['first_error']}"
                   for p, runs in doc["runs"].items() for w, run in runs.items()
                   if run.get("metrics", {}).get("failed")]
    parts = [
        f"model `{m['model_ref']}` ({m['model_path']}); threads {m['threads']}, ctx {m['ctx_size']}, "
        f"parallel {m['parallel']}, seed {m['seed']}, scale {m['scale']}; {m['cpus']} CPUs; started {m['started']}"
        + (f"; every figure a median of {repeat} runs" if repeat > 1 else ""),
        "## Metrics\n\n" + metrics_table(doc),
        "## Ceilings (same llama.cpp sources, same threads)\n\n" + ceilings_table(doc),
        "## Time against the ceilings\n\nEach server's own work (prompt tokens it computed, tokens it generated) "
        "at llama-bench pp512 and llama-batched-bench S_TG, prefill and decode apart, against the time it "
        "took.\n\n" + ceiling_times_table(ceiling_times(doc)),
        "## Targets\n\n" + targets_table(targets)
        + f"\n\n{passed} of {len(judged)} judged targets pass"
        + (f"; {missing} could not be judged (n/a: not measured or failed)" if missing else "")
        + (". Rows in parentheses are informational: the other llama-server config."
           if any(not r["counts"] for r in targets) else "."),
    ]
    if repeat > 1:
        parts.insert(-1, repeats_section(doc))
    if errors or failed_reqs:
        parts.append("## Problems\n\n" + "\n".join(errors + failed_reqs))
    return "\n\n".join(parts) + "\n"


def write_outputs(doc: dict[str, Any], out: Path) -> tuple[str, list[Path], str | None]:
    """results.json, report.md and the plots in ``out``; returns (report text, plot paths, plot note)."""
    from qwenhost.bench.plots import write_plots

    targets = evaluate_targets(doc)
    doc["targets"] = targets
    text = summary(doc, targets)
    (out / "results.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    pngs, note = write_plots(doc, out)
    md = "# qwenhost bench\n\n" + text
    if pngs:
        md += "\n## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    (out / "report.md").write_text(md)
    return text, pngs, note
