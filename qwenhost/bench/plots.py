"""PNG plots of a results document (matplotlib is an optional extra: ``pip install 'qwenhost[bench]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

INSTALL_HINT = "plots skipped: matplotlib is not installed (pip install 'qwenhost[bench]' or 'matplotlib>=3.8,<4')"


def concurrency_points(doc: dict[str, Any], peer: str) -> list[tuple[int, float | None, float | None]]:
    """(concurrency, aggregate tok/s, TTFT p50 s) at 1 (single), 8 and 16 (streams) where measured."""
    runs = doc["runs"].get(peer, {})
    points = []
    for n, workload, ttft_key in ((1, "single", "ttft_s"), (8, "streams-8", "ttft_p50_s"),
                                  (16, "streams-16", "ttft_p50_s")):
        m = runs.get(workload, {}).get("metrics")
        if m:
            points.append((n, m.get("aggregate_tok_s"), m.get(ttft_key)))
    return points


def write_plots(doc: dict[str, Any], out: Path) -> tuple[list[Path], str | None]:
    """Writes the plots that have data; returns their paths and, when plots were skipped, why."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], INSTALL_HINT
    written: list[Path] = []
    peers = list(doc["runs"])

    series = {p: concurrency_points(doc, p) for p in peers}
    if any(series.values()):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for p, pts in series.items():
            agg = [(n, a) for n, a, _ in pts if a is not None]
            ttft = [(n, t) for n, _, t in pts if t is not None]
            if agg:
                ax1.plot(*zip(*agg, strict=True), marker="o", label=p)
            if ttft:
                ax2.plot(*zip(*ttft, strict=True), marker="o", label=p)
        for ax, title, ylabel in ((ax1, "Aggregate throughput", "tok/s"), (ax2, "TTFT p50", "seconds")):
            ax.set_title(title)
            ax.set_xlabel("concurrent streams")
            ax.set_ylabel(ylabel)
            ax.set_xticks([1, 8, 16])
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        written.append(out / "concurrency.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    runs = [(p, doc["runs"][p]["interference"]["timelines"]) for p in peers
            if "timelines" in doc["runs"][p].get("interference", {})]
    if runs:
        fig, axes = plt.subplots(len(runs), 1, figsize=(11, 3.4 * len(runs)), squeeze=False, sharex=True)
        for ax, (p, tl) in zip(axes[:, 0], runs, strict=True):
            long = tl["long"]
            sent = long["send"]
            for i, s in enumerate(tl["streams"]):
                c, k = s["chunks"], s.get("chunk_tokens") or [1] * len(s["chunks"])
                # Per-token gaps, as the metric counts them: a 3-token chunk (an emoji) is 3 steps.
                ax.plot([t - sent for t in c[1:]], [(c[j] - c[j - 1]) / max(1, k[j]) for j in range(1, len(c))],
                        ".", ms=3, label=f"stream {i}")
            ax.axvline(0, color="k", ls="--", lw=1, label="long prompt sent")
            if long["chunks"]:
                ax.axvline(long["chunks"][0] - sent, color="r", ls="--", lw=1, label="its first token")
            ax.set_title(f"{p}: inter-token gaps of the decoding streams")
            ax.set_ylabel("gap per token (s)")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("seconds since the long prompt was sent")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        keep = [(h, lab) for h, lab in zip(handles, labels, strict=True) if not lab.startswith("stream")]
        axes[0, 0].legend(*zip(*keep, strict=True), loc="upper right")
        fig.tight_layout()
        written.append(out / "interference_itl.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written, None
