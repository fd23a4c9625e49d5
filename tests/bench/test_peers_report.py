"""Parsing the ceiling tools' outputs, the peers' command lines, and target evaluation (no processes run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenhost.bench import peers, report

BATCHED_BENCH_OUT = """
main: n_kv_max = 32768, n_batch = 2048, n_ubatch = 512, flash_attn = -1, is_pp_shared = 0, is_tg_separate = 0

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|   128 |    128 |    8 |   2048 |   10.101 |   101.38 |   40.404 |    25.34 |   50.505 |    40.55 |
|   128 |    128 |   16 |   4096 |   20.202 |   101.38 |   60.606 |    33.79 |   80.808 |    50.69 |

llama_perf_context_print:        load time =     123.45 ms
"""

LLAMA_BENCH_JSON = json.dumps([
    {"model_type": "qwen2 1.5B Q4_K - Medium", "n_threads": 2, "n_prompt": 512, "n_gen": 0, "avg_ts": 61.25,
     "stddev_ts": 0.5},
    {"model_type": "qwen2 1.5B Q4_K - Medium", "n_threads": 2, "n_prompt": 0, "n_gen": 128, "avg_ts": 16.15,
     "stddev_ts": 0.4},
])


def test_parse_batched_bench_table() -> None:
    assert peers.parse_batched_bench(BATCHED_BENCH_OUT) == {8: 25.34, 16: 33.79}
    assert peers.parse_batched_bench("no table here") == {}


def test_parse_llama_bench_json() -> None:
    got = peers.parse_llama_bench_json(LLAMA_BENCH_JSON)
    assert got["pp512"] == 61.25 and got["tg128"] == 16.15 and got["tg128_stddev"] == 0.4


def test_commands_use_the_same_settings() -> None:
    model = Path("/m/model.gguf")
    ls = peers.llama_server_command(Path("/b/llama-server"), model, 9000, 16, 32768, 2)
    assert ls[:10] == ["/b/llama-server", "-m", "/m/model.gguf", "-np", "16", "-c", "32768", "-t", "2", "--jinja"]
    assert "--kv-unified" not in ls
    assert peers.llama_server_command(Path("/b/llama-server"), model, 9000, 16, 32768, 2, kv_unified=True)[-1] == \
        "--kv-unified"
    assert "--no-repack" not in ls
    assert "--no-repack" in peers.llama_server_command(Path("/b/llama-server"), model, 9000, 16, 32768, 2,
                                                       extra_buffers=False)
    qh = peers.qwenhost_command(model, 9000, 16, 32768, 2)
    assert qh[1:4] == ["-m", "qwenhost", "serve"]
    for flag, value in (("--parallel", "16"), ("--ctx-size", "32768"), ("--threads", "2"), ("--model", str(model))):
        assert qh[qh.index(flag) + 1] == value
    assert qh[qh.index("--kv-layout") + 1] == "unified"
    ps = peers.qwenhost_command(model, 9000, 16, 32768, 2, kv_layout="per-sequence")
    assert ps[ps.index("--kv-layout") + 1] == "per-sequence"
    bb = peers.batched_bench_command(Path("/b/llama-batched-bench"), model, 2, 32768, (8, 16))
    assert " ".join(bb[3:]) == "-kvu -npp 128 -ntg 128 -npl 8,16 -c 32768 -t 2"


def test_peak_rss_of_this_process() -> None:
    import os

    assert peers.peak_rss_kib(os.getpid()) > 1000


def _doc() -> dict:
    def run(**metrics: float) -> dict:
        return {"metrics": metrics}

    return {
        "meta": {"workloads": ["single", "chat", "interference"]},
        "ceilings": {"llama_bench": {"tg128": 20.0}},
        "runs": {
            "qwenhost": {"single": run(decode_tok_s=16.0), "chat": run(total_s=40.0, peak_rss_mib=900.0),
                         "interference": run(itl_ratio=2.5, long_ttft_s=30.0)},
            "llama-server": {"single": run(decode_tok_s=16.5), "chat": run(total_s=100.0, peak_rss_mib=800.0),
                             "interference": run(itl_ratio=8.0, long_ttft_s=10.0)},
            "llama-server-kvu": {"single": run(decode_tok_s=17.0), "chat": run(total_s=70.0, peak_rss_mib=1000.0),
                                 "interference": run(itl_ratio=8.0, long_ttft_s=25.0)},
        },
    }


def _row(rows: list[dict], target: str, ref: str) -> dict:
    return next(r for r in rows if r["target"].startswith(target) and r["reference"] == ref)


def test_targets_pass_fail_and_which_count() -> None:
    rows = report.evaluate_targets(_doc())
    r = _row(rows, "single decode ≥ 0.95× llama-server", "llama-server")
    assert r["ratio"] == pytest.approx(16 / 16.5) and r["pass"] is True and r["counts"]
    r = _row(rows, "single decode ≥ 0.95× llama-server", "llama-server-kvu")
    assert r["pass"] is False and not r["counts"]  # 0.941: informational only
    assert _row(rows, "single decode ≥ 0.85× llama-bench", "llama_bench tg128")["pass"] is False  # 0.8
    # chat is judged against both configs: 2.5x faster than one, 1.75x than the other
    assert _row(rows, "chat total", "llama-server")["pass"] is True
    r = _row(rows, "chat total", "llama-server-kvu")
    assert r["pass"] is False and r["counts"]
    assert _row(rows, "chat peak RSS", "llama-server")["pass"] is False
    assert _row(rows, "interference ITL", "(itself)")["pass"] is True
    assert _row(rows, "interference long-prompt", "llama-server")["pass"] is False  # 3.0x
    assert not any(r["target"].startswith("streams") for r in rows)  # not run, not judged


def test_missing_values_are_not_applicable() -> None:
    doc = _doc()
    doc["ceilings"] = {}
    assert _row(report.evaluate_targets(doc), "single decode ≥ 0.85×", "llama_bench tg128")["pass"] is None


def _doc_with_timelines() -> dict:
    doc = _doc()
    doc["meta"].update(model_ref="m", model_path="/m.gguf", threads=2, ctx_size=32768, parallel=16, seed=0,
                       scale=1.0, cpus=2, started="now")
    stream = {"send": 0.0, "chunks": [1.0, 1.25, 1.5, 3.5, 3.75], "completion_tokens": 5, "max_tokens": 5}
    doc["runs"]["qwenhost"]["interference"]["timelines"] = {
        "streams": [stream, stream], "long": {"send": 1.6, "chunks": [3.4], "completion_tokens": 1}}
    doc["runs"]["qwenhost"]["single"]["metrics"].update(aggregate_tok_s=15.0, ttft_s=0.5)
    return doc


def test_outputs_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import fails as when not installed
    text, pngs, note = report.write_outputs(_doc_with_timelines(), tmp_path)
    assert pngs == [] and note is not None and "pip install" in note
    assert "## Targets" in text and "single decode" in text
    assert json.loads((tmp_path / "results.json").read_text())["targets"]
    assert (tmp_path / "report.md").is_file() and not list(tmp_path.glob("*.png"))


def test_plots_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _, pngs, note = report.write_outputs(_doc_with_timelines(), tmp_path)
    assert note is None
    assert sorted(p.name for p in pngs) == ["concurrency.png", "interference_itl.png"]
    assert all(p.stat().st_size > 1000 for p in pngs)
    assert "![concurrency](concurrency.png)" in (tmp_path / "report.md").read_text()


def test_time_against_the_ceilings() -> None:
    doc = _doc()
    doc["ceilings"] = {"llama_bench": {"pp512": 50.0}, "batched_bench": {"8": 20.0, "16": 32.0}}
    doc["runs"]["qwenhost"]["streams-8"] = {"metrics": {"wall_s": 30.0, "computed_prompt_tokens": 500,
                                                        "completion_tokens": 200}}
    doc["runs"]["qwenhost"]["chat"]["metrics"].update(computed_prompt_tokens=1000, completion_tokens=640)
    doc["runs"]["llama-server"]["chat"]["metrics"].update(computed_prompt_tokens=None, completion_tokens=640)
    rows = {(r["workload"], r["peer"]): r for r in report.ceiling_times(doc)}
    # streams-8: 500 prompt tokens at 50 tok/s + 200 generated at npl-8's 20 tok/s
    assert rows[("streams-8", "qwenhost")]["ceiling_s"] == pytest.approx(10 + 10)
    assert rows[("streams-8", "qwenhost")]["times_ceiling"] == pytest.approx(1.5)
    # chat decodes 16 users at once: npl 16
    assert rows[("chat", "qwenhost")]["ceiling_s"] == pytest.approx(20 + 20)
    assert rows[("chat", "qwenhost")]["times_ceiling"] == pytest.approx(1.0)
    assert ("chat", "llama-server") not in rows  # it did not say what it computed
    assert "| chat | qwenhost | 1000 | 640 | 40.0 | 40.0 | 1.00 |" in report.ceiling_times_table(list(rows.values()))
    doc["ceilings"] = {}
    assert report.ceiling_times(doc) == []
