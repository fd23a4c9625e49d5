"""llama.cpp's AMX weight buffers crash on Q4_K_M models (llama.cpp issue 20824): the runner turns the CPU's
extra buffer types off where the build has AMX, and a user can override that either way."""

from __future__ import annotations

import pytest

from qwenhost.engine.runner import use_extra_buffers

AMD = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | LLAMAFILE = 1 | REPACK = 1 | "
XEON = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | REPACK = 1 | "


@pytest.mark.parametrize("info, setting, expected", [
    (AMD, None, True),
    (XEON, None, False),
    (XEON, "1", True),
    (AMD, "0", False),
    (XEON, " 1 ", True),
    (XEON, "yes", False),  # not 0 or 1: the rule decides
    (AMD, "", True),
])
def test_extra_buffers_rule(info: str, setting: str | None, expected: bool) -> None:
    assert use_extra_buffers(info, setting) is expected
