"""The results table of bench/gateway_overhead.py and its reading against the issue's targets."""

from __future__ import annotations

from typing import Any

# The issue's measurements of LiteLLM's proxy on this machine kind (one core, instant upstream, master key),
# used when LiteLLM is not measured here.
ISSUE_LITELLM = {"added_p50_ms": {False: (9.0, 10.0), True: (14.0, 16.0)},
                 "rps": {False: (110.0, 130.0), True: (65.0, 70.0)}, "cpu_ms_per_request": 9.0}
TARGET_ADDED_P50_MS, TARGET_ADDED_P99_MS, TARGET_RPS_RATIO = 1.0, 5.0, 5.0


Key = tuple[bool, int, float | None]  # stream, clients, paced rate (None: closed loop)


def _key(r: dict[str, Any]) -> Key:
    return r["stream"], r["concurrency"], r["rate"]


def _added(r: dict[str, Any], floor: dict[Key, dict[str, Any]]) -> tuple[float, float] | None:
    base = floor.get(_key(r))
    if r["target"] == "upstream" or base is None or not r["samples"]:
        return None
    return r["p50_ms"] - base["p50_ms"], r["p99_ms"] - base["p99_ms"]


def _row(r: dict[str, Any], floor: dict[Key, dict[str, Any]]) -> str:
    added = _added(r, floor)
    extra = r.get("extra_cpu_ms_per_req")
    load = "closed" if r["rate"] is None else f"paced {r['rate']:.0f}/s"
    return (f"| {r['target']} | {'yes' if r['stream'] else 'no'} | {r['concurrency']} | {load} | {r['samples']} | "
            f"{r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            + (f"{added[0]:+.2f} | {added[1]:+.2f} | " if added else " |  | ")
            + f"{r['server_cpu_ms_per_req']:.2f} | {'' if extra is None else f'{extra:.2f}'} | "
            f"{r['server_cpu_pct']:.0f} | {r['server_core_busy_pct']:.0f} | {r['loadgen_cpu_pct']:.0f} | "
            f"{r['errors']} |")


def report(results: list[dict[str, Any]], ledgers: list[dict[str, Any]]) -> str:
    floor = {_key(r): r for r in results if r["target"] == "upstream"}
    lines = ["| target | stream | clients | load | requests | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | "
             "server CPU ms/req | db CPU ms/req | server CPU % | core 0 busy % | loadgen CPU % | errors |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [_row(r, floor) for r in results if r["samples"]]
    lines.append("")
    for led in ledgers:
        lines.append(f"* ledger {led['target']}: {led['ledger_rows']} rows for {led['requests_ok']} successful "
                     f"requests ({led['completed']} completed, {led['priced']} priced): "
                     + ("exact" if led["ledger_ok"] else "**MISMATCH**"))
    targets = list(dict.fromkeys(r["target"] for r in results if r["target"].startswith("qwenhost/")))
    lite = [r for r in results if r["target"] == "litellm"]
    lines.append("")
    lines.append("Against the targets (added = the target's latency minus the instant upstream's, same clients and "
                 "load; 16 clients judged on the paced run, as closed-loop clients on a saturated server measure "
                 "its queue):")
    for stream in (False, True):
        mode = "streamed" if stream else "non-streamed"
        if lite:
            lite_rps = max(r["rps"] for r in lite if r["stream"] == stream)
            lite_note = f"LiteLLM measured here: {lite_rps:.0f} req/s"
        else:
            lo, hi = ISSUE_LITELLM["rps"][stream]
            lite_rps, lite_note = hi, f"LiteLLM per the issue: {lo:.0f}-{hi:.0f} req/s (ratio taken to {hi:.0f})"
        for t in [*targets, *(["litellm"] if lite else [])]:
            mine = [r for r in results if r["target"] == t and r["stream"] == stream and r["samples"]]
            if not mine:
                continue
            best = max(mine, key=lambda r: r["rps"])
            line = f"* {t}, {mode}: saturates at {best['rps']:.0f} req/s"
            if t != "litellm":
                ratio = best["rps"] / lite_rps
                line += (f"; {lite_note}; ratio {ratio:.1f}x "
                         f"({'meets' if ratio >= TARGET_RPS_RATIO else 'misses'} the {TARGET_RPS_RATIO:.0f}x target)")
            lines.append(line)
            for r in mine:
                added = _added(r, floor)
                if added is None:
                    continue
                verdict = "meets" if added[0] < TARGET_ADDED_P50_MS and added[1] < TARGET_ADDED_P99_MS else "misses"
                if r["rate"] is None and r["concurrency"] > 1:
                    # Saturated: each client waits for the others' requests, so p50 ~ clients / rps.
                    how, note = "closed loop (saturated)", f" (the queue: {r['concurrency']} / rps = " \
                                                          f"{1000 * r['concurrency'] / r['rps']:.2f} ms)"
                else:
                    how = "closed loop" if r["rate"] is None else f"paced at {r['rate']:.0f} req/s"
                    note = "" if t == "litellm" else (f" ({verdict} < {TARGET_ADDED_P50_MS:.0f} / "
                                                      f"< {TARGET_ADDED_P99_MS:.0f} ms)")
                who = f"{r['concurrency']} client" + ("s" if r["concurrency"] > 1 else "")
                lines.append(f"  * {who}, {how}: added p50 {added[0]:+.2f} ms, p99 "
                             f"{added[1]:+.2f} ms{note}")
    if not lite:
        (a, b), (c, d) = ISSUE_LITELLM["added_p50_ms"][False], ISSUE_LITELLM["added_p50_ms"][True]
        (e, f), (g, h) = ISSUE_LITELLM["rps"][False], ISSUE_LITELLM["rps"][True]
        lines.append(f"* LiteLLM was not measured here; the ratios use the issue's figures ({a:.0f}-{b:.0f} ms added "
                     f"p50 non-streamed, {c:.0f}-{d:.0f} ms streamed; {e:.0f}-{f:.0f} / {g:.0f}-{h:.0f} req/s; "
                     f"~{ISSUE_LITELLM['cpu_ms_per_request']:.0f} ms of CPU per request).")
    return "\n".join(lines)

