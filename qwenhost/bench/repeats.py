"""Repeated runs: the order they run in, and one median result per (peer, workload) from several.

On a shared 2-core host one run's ratio moves by ±10-20 % (the issue says as much), so a verdict rests on
medians of repeated runs. The peers alternate within a workload, first one way and then the other, so a
host that slows down or speeds up during the runs weighs on every peer alike rather than on whichever ran
last. Ratios are then ratios of medians: the target code reads the median results like a single run's.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

# The metric that stands for a workload when picking which repeat's timelines to keep for the plots.
PRIMARY_METRIC = {"single": "decode_tok_s", "streams-8": "aggregate_tok_s", "streams-16": "aggregate_tok_s",
                  "chat": "total_s", "interference": "itl_ratio"}


def schedule(workloads: Sequence[str], peers: Sequence[str], repeat: int) -> list[tuple[str, int, str]]:
    """(workload, repeat index, peer) in run order: workload by workload; within one, every repeat runs all
    peers back to back, in the given order on even repeats and reversed on odd ones (ABBA), so a drift in the
    host's speed over a workload's runs cancels in the medians instead of favouring one peer."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    order: list[tuple[str, int, str]] = []
    for workload in workloads:
        for rep in range(repeat):
            for peer in (peers if rep % 2 == 0 else list(reversed(peers))):
                order.append((workload, rep, peer))
    return order


def is_number(value: Any) -> bool:
    """A metric's value that is a number (a bool is a flag, not a number)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def median_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric, the median over the runs that have it. Failures add up instead (a failed request in any
    repeat must show), flags hold only if they held in every run, and the first error text is kept."""
    keys = list(dict.fromkeys(k for r in runs for k in r))
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in runs if key in r and r[key] is not None]
        if key == "failed":
            out[key] = sum(values)
        elif key == "first_error":
            out[key] = values[0] if values else None
        elif values and all(isinstance(v, bool) for v in values):
            out[key] = all(values)
        elif values and all(is_number(v) for v in values):
            med = statistics.median(values)
            out[key] = int(med) if all(isinstance(v, int) for v in values) and med == int(med) else med
        else:
            out[key] = values[0] if values else None
    return out


def combine(workload: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from a (peer, workload)'s repeats, shaped like a single run's: median metrics, the server
    and timelines of the repeat nearest the median (for the plots), and every repeat's metrics under
    ``repeats`` so the spread stays visible. If every repeat failed, the first failure stands."""
    if len(results) == 1:
        return results[0]
    ok = [r for r in results if "error" not in r and "metrics" in r]
    errors = [r["error"] for r in results if "error" in r]
    if not ok:
        return {**results[0], "repeats": [{"error": e} for e in errors]}
    metrics = median_metrics([r["metrics"] for r in ok])
    key = PRIMARY_METRIC.get(workload)
    scored = [r for r in ok if key and is_number(r["metrics"].get(key))]
    target = metrics.get(key) if key else None
    nearest = min(scored, key=lambda r: abs(r["metrics"][key] - target)) if scored and is_number(target) else ok[0]
    out = {k: v for k, v in nearest.items() if k != "metrics"}
    out["metrics"] = metrics
    out["repeats"] = [{"error": r["error"]} if "error" in r else {"metrics": r["metrics"]} for r in results]
    if errors:
        out["repeat_errors"] = errors
    return out

