"""`qwenhost bench` end to end against the real small model, qwenhost only, at a tiny scale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SMALL_MODEL

WORKLOADS = ("single", "streams-8", "interference", "chat")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("bench")
    # Small context and slots: the workloads at this scale need little, and start-up is most of the run.
    cmd = [sys.executable, "-m", "qwenhost", "bench", "--model", SMALL_MODEL, "--peers", "qwenhost", "--no-ceilings",
           "--workloads", ",".join(WORKLOADS), "--scale", "0.05", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads((out / "results.json").read_text()), out, res.stdout


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _requests(timelines: object) -> list[dict]:
    if isinstance(timelines, dict) and "chunks" in timelines:
        return [timelines]
    values = timelines.values() if isinstance(timelines, dict) else timelines
    return [r for v in values for r in _requests(v)]  # type: ignore[union-attr]


@pytest.mark.model
def test_every_workload_ran_and_generated_max_tokens(bench_run: tuple[dict, Path, str]) -> None:
    doc, _, _ = bench_run
    runs = doc["runs"]["qwenhost"]
    assert set(runs) == set(WORKLOADS)
    for name, run in runs.items():
        assert "error" not in run, (name, run.get("error"))
        assert run["metrics"]["failed"] == 0, (name, run["metrics"]["first_error"])
        reqs = _requests(run["timelines"])
        assert reqs and all(r["completion_tokens"] == r["max_tokens"] for r in reqs), name  # EOS ignored
        assert all(r["chunks"] == sorted(r["chunks"]) and r["chunks"][0] >= r["send"] for r in reqs), name
        assert run["metrics"]["all_tokens_generated"] is True
        assert _positive(run["server"]["startup_s"]) and run["server"]["peak_rss_mib"] > 100
        # The server's counters after the run: its steps were counted by kind.
        scrape = Path(run["server"]["metrics_file"]).read_text()
        assert 'qwenhost_engine_step_seconds_count{kind="decode"}' in scrape, name


@pytest.mark.model
def test_metrics_are_sane(bench_run: tuple[dict, Path, str]) -> None:
    doc, _, _ = bench_run
    m = {w: r["metrics"] for w, r in doc["runs"]["qwenhost"].items()}
    assert 1 < m["single"]["decode_tok_s"] < 1000 and 0 < m["single"]["ttft_s"] < 30
    s8 = m["streams-8"]
    assert s8["requests"] == 8 and s8["completion_tokens"] > 8
    for key in ("aggregate_tok_s", "ttft_p50_s", "steady_decode_tok_s", "wall_s"):
        assert _positive(s8[key]), key
    assert s8["computed_prompt_tokens"] > 8  # no prompt shared, nothing cached but the template's head
    assert s8["aggregate_tok_s"] * s8["wall_s"] == pytest.approx(s8["completion_tokens"], rel=1e-6)
    chat = m["chat"]
    assert chat["users"] == 16 and chat["turns"] == 2 and chat["all_turns_done"]
    assert _positive(chat["total_s"]) and _positive(chat["turn0_ttft_p50_s"]) and chat["peak_rss_mib"] > 100
    inter = m["interference"]
    assert inter["streams"] == 8
    for key in ("itl_p95_undisturbed_s", "itl_p95_prefill_s", "itl_ratio", "long_ttft_s"):
        assert _positive(inter[key]), key
    assert inter["gaps_undisturbed"] > 0 and inter["gaps_prefill"] > 0


@pytest.mark.model
def test_outputs_written(bench_run: tuple[dict, Path, str]) -> None:
    doc, out, stdout = bench_run
    assert "## Targets" in stdout and "decode tok/s" in stdout
    assert (out / "report.md").read_text().startswith("# qwenhost bench")
    assert any(t["reference"] == "(itself)" for t in doc["targets"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pytest.skip("matplotlib not installed: plots are skipped by design")
    for png in ("concurrency.png", "interference_itl.png"):
        assert (out / png).stat().st_size > 1000


@pytest.mark.model
def test_repeat_runs_each_workload_again_and_reports_medians(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "qwenhost", "bench", "--model", SMALL_MODEL, "--peers", "qwenhost", "--no-ceilings",
           "--workloads", "single", "--scale", "0.05", "--repeat", "2", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert res.returncode == 0, res.stderr[-4000:]
    assert "(run 2 of 2)" in res.stderr
    run = json.loads((tmp_path / "results.json").read_text())["runs"]["qwenhost"]["single"]
    rates = [r["metrics"]["decode_tok_s"] for r in run["repeats"]]
    assert len(rates) == 2 and all(_positive(v) for v in rates)
    assert run["metrics"]["decode_tok_s"] == pytest.approx(sum(rates) / 2)  # two runs' median is their mean
    assert sorted(p.name for p in (tmp_path / "logs").glob("*.log")) == ["qwenhost-single-r1.log",
                                                                         "qwenhost-single-r2.log"]
    assert "## Repeats" in res.stdout and "every figure a median of 2 runs" in res.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--repeat", "0"], "--repeat"),
    (["--workloads", "single,nope"], "unknown workload nope"),
    (["--peers", "vllm"], "unknown peer vllm"),
])
def test_bad_options_are_cli_errors(args: list[str], message: str, tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "qwenhost", "bench", *args, "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "results.json").exists()
