"""qwenhost's patches to llama.cpp's tiled matrix product (scripts/llama-cpp-patches/0005, 0006) on the real 0.5B
model, whose ffn_down weights are Q4_K in half the layers and Q6_K in the others.

- 0006: Q4_K weights that llama.cpp repacked for its own product (eight rows interleaved) go through the tiled
  kernel for batches of 17 rows and more, read in their interleaved layout. The same kernel reads plain Q4_K rows
  when the repack buffer is off (QWENHOST_CPU_EXTRA_BUFFERS=0), so a prompt's logits must be the same bits either
  way: a row, a scale or a code byte taken from the wrong place changes them.
- 0005: Q6_K weights unpacked into the tiles 64 bytes at a time, and the correction sums the VNNI kernel never reads
  skipped. The reference is llama.cpp's row-by-row product (GGML_CPU_TILED_MM=0, in a process of its own because
  llama.cpp reads it once): the same next-token distribution up to float rounding, where a misplaced bit pair of a
  6-bit code moves logits by whole units. An 8-token prompt takes the tiled kernel for Q6_K only (the repacked Q4_K
  weights keep llama.cpp's product below 17 rows); a 64-token one for both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from qwenhost.engine.runner import ModelRunner, RunnerConfig

WORDS = "river station engine letter quiet ancient distant remembered walked past".split()
PROMPT = " ".join(WORDS[(7 * i) % len(WORDS)] for i in range(400))


def _prompt_logits(path, n_tokens: int, chunk: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The last row's logits of the first n_tokens of PROMPT, computed in calls of `chunk` tokens."""
    r = ModelRunner(RunnerConfig(model_path=path, n_ctx=2048, n_seq_max=1, n_batch=512, n_ubatch=512, n_threads=2))
    try:
        toks = r.tokenize(PROMPT)[:n_tokens]
        assert len(toks) == n_tokens
        last = 0
        for a in range(0, n_tokens, chunk):
            r.batch.clear()
            last = r.batch.add(toks[a:a + chunk], a, 0, True)
            assert r.decode() == 0
        return r.logits(last).copy()
    finally:
        r.close()


def _has_vnni() -> bool:
    import llama_cpp as L

    info = L.llama_print_system_info().decode(errors="replace")
    return "AVX512_VNNI = 1" in info


@pytest.mark.parametrize("n_tokens, chunk", [(17, 17), (40, 40), (300, 300), (96, 24)])
def test_repacked_q4_K_weights_give_the_plain_rows_logits(small_model_path, monkeypatch, n_tokens, chunk) -> None:  # type: ignore[no-untyped-def]
    if not _has_vnni():
        pytest.skip("patch 0006 routes repacked Q4_K weights through the tiled kernel only where it has VNNI")
    monkeypatch.setenv("QWENHOST_CPU_EXTRA_BUFFERS", "1")
    repacked = _prompt_logits(small_model_path, n_tokens, chunk)
    monkeypatch.setenv("QWENHOST_CPU_EXTRA_BUFFERS", "0")
    plain = _prompt_logits(small_model_path, n_tokens, chunk)
    assert np.array_equal(repacked, plain), f"largest difference {np.abs(repacked - plain).max()}"


_CHILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_tiled_weights import _prompt_logits
print(json.dumps(_prompt_logits(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[2])).tolist()))
"""


def _logits_in_child(path, n_tokens: int, tiled: bool) -> np.ndarray:  # type: ignore[no-untyped-def]
    env = dict(os.environ, GGML_CPU_TILED_MM="1" if tiled else "0")
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(n_tokens), os.path.dirname(__file__)],
                         env=env, capture_output=True, text=True, timeout=300, check=True)
    return np.array(json.loads(out.stdout.strip().splitlines()[-1]), dtype=np.float32)


@pytest.mark.parametrize("n_tokens", [8, 64])
def test_q6_K_tiles_give_the_row_by_row_distribution(small_model_path, n_tokens: int) -> None:  # type: ignore[no-untyped-def]
    tiled = _logits_in_child(small_model_path, n_tokens, True)
    reference = _logits_in_child(small_model_path, n_tokens, False)
    # measured on an AMD EPYC (Zen 4) host: 0.03 (8 tokens) and 0.36 (64 tokens)
    assert np.abs(tiled - reference).max() < 1.0, np.abs(tiled - reference).max()
    assert int(tiled.argmax()) == int(reference.argmax())
