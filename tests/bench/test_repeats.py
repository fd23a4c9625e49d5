"""`qwenhost bench --repeat`: run order, medians, and the report built on them."""

from __future__ import annotations

import pytest

from qwenhost.bench import repeats, report


def test_schedule_alternates_peers_within_each_workload() -> None:
    order = repeats.schedule(["single", "chat"], ["qwenhost", "llama-server"], 3)
    assert order == [
        ("single", 0, "qwenhost"), ("single", 0, "llama-server"),
        ("single", 1, "llama-server"), ("single", 1, "qwenhost"),
        ("single", 2, "qwenhost"), ("single", 2, "llama-server"),
        ("chat", 0, "qwenhost"), ("chat", 0, "llama-server"),
        ("chat", 1, "llama-server"), ("chat", 1, "qwenhost"),
        ("chat", 2, "qwenhost"), ("chat", 2, "llama-server"),
    ]
    assert repeats.schedule(["single"], ["a", "b", "c"], 1) == [("single", 0, "a"), ("single", 0, "b"),
                                                                ("single", 0, "c")]
    with pytest.raises(ValueError, match="at least 1"):
        repeats.schedule(["single"], ["a"], 0)


def test_median_metrics_by_kind() -> None:
    runs = [
        {"aggregate_tok_s": 10.0, "requests": 8, "failed": 0, "first_error": None, "all_tokens_generated": True,
         "ttft_p50_s": None, "completion_tokens": 1000},
        {"aggregate_tok_s": 14.0, "requests": 8, "failed": 1, "first_error": "HTTP 500", "all_tokens_generated": False,
         "ttft_p50_s": 3.0, "completion_tokens": 1001},
        {"aggregate_tok_s": 11.0, "requests": 8, "failed": 2, "first_error": "timeout", "all_tokens_generated": True,
         "ttft_p50_s": 5.0, "completion_tokens": 1003},
    ]
    m = repeats.median_metrics(runs)
    assert m["aggregate_tok_s"] == 11.0  # the median, not the mean (11.67)
    assert m["ttft_p50_s"] == 4.0  # over the runs that measured it
    assert m["failed"] == 3 and m["first_error"] == "HTTP 500"  # failures add up; none is hidden
    assert m["all_tokens_generated"] is False  # a flag holds only if it held every time
    assert m["requests"] == 8 and isinstance(m["requests"], int)
    assert m["completion_tokens"] == 1001
    assert repeats.median_metrics(runs[:2])["completion_tokens"] == 1000.5  # an even count's median stays exact


def _run(**metrics: float) -> dict:
    return {"server": {"log": f"log-{metrics.get('decode_tok_s')}"}, "metrics": metrics,
            "timelines": [metrics.get("decode_tok_s")]}


def test_combine_keeps_the_median_run_for_plots_and_every_repeat() -> None:
    results = [_run(decode_tok_s=15.0, ttft_s=0.9), _run(decode_tok_s=17.0, ttft_s=0.5),
               {"error": "RuntimeError: server exited"}, _run(decode_tok_s=16.2, ttft_s=0.7)]
    out = repeats.combine("single", results)
    assert out["metrics"] == {"decode_tok_s": 16.2, "ttft_s": 0.7}
    assert out["timelines"] == [16.2] and out["server"]["log"] == "log-16.2"  # the run nearest the median
    assert [r.get("error") for r in out["repeats"]] == [None, None, "RuntimeError: server exited", None]
    assert out["repeat_errors"] == ["RuntimeError: server exited"]
    assert "error" not in out  # the median of three good runs stands
    single = _run(decode_tok_s=15.0)
    assert repeats.combine("single", [single]) is single  # one run: unchanged, no repeats key
    failed = repeats.combine("single", [{"error": "a"}, {"error": "b"}])
    assert failed["error"] == "a" and [r["error"] for r in failed["repeats"]] == ["a", "b"]


def _doc(repeat: int) -> dict:
    q = [{"metrics": {"decode_tok_s": v}} for v in (15.0, 16.0, 19.0)][:repeat]
    ls = [{"metrics": {"decode_tok_s": v}} for v in (17.0, 16.5, 14.0)][:repeat]
    return {"meta": {"workloads": ["single"], "repeat": repeat, "model_ref": "m", "model_path": "/m.gguf",
                     "threads": 2, "ctx_size": 32768, "parallel": 16, "seed": 0, "scale": 1.0, "cpus": 2,
                     "started": "now"},
            "ceilings": {},
            "runs": {"qwenhost": {"single": repeats.combine("single", q)},
                     "llama-server": {"single": repeats.combine("single", ls)}}}


def test_targets_compare_medians_and_report_lists_every_run() -> None:
    doc = _doc(3)
    row = next(r for r in report.evaluate_targets(doc) if r["reference"] == "llama-server")
    # Medians 16.0 vs 16.5: 0.970, a pass; the first run alone (15 vs 17, 0.88) would have failed.
    assert row["ratio"] == pytest.approx(16.0 / 16.5) and row["pass"] is True
    text = report.summary(doc, report.evaluate_targets(doc))
    assert "every figure a median of 3 runs" in text
    assert "| single | decode tok/s | qwenhost | 15 / 16 / 19 | 16 |" in text
    assert "| single | decode tok/s | llama-server | 17 / 16.5 / 14 | 16.5 |" in text
    assert text.index("## Repeats") < text.index("## Targets")
    one = report.summary(_doc(1), report.evaluate_targets(_doc(1)))
    assert "## Repeats" not in one and "median of" not in one


def test_a_failed_repeat_is_named_in_the_problems() -> None:
    doc = _doc(3)
    runs = [{"metrics": {"decode_tok_s": 15.0}}, {"error": "RuntimeError: server exited (code 1)"},
            {"metrics": {"decode_tok_s": 17.0}}]
    doc["runs"]["qwenhost"]["single"] = repeats.combine("single", runs)
    text = report.summary(doc, report.evaluate_targets(doc))
    assert "- qwenhost / single: 1 of 3 runs failed and are left out of the medians, e.g. RuntimeError: server " \
           "exited (code 1)" in text
    assert "| single | decode tok/s | qwenhost | 15 / error / 17 | 16 |" in text
