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
    (AMD, "", True),  # empty: the rule decides
])
def test_extra_buffers_rule(info: str, setting: str | None, expected: bool) -> None:
    assert use_extra_buffers(info, setting) is expected


@pytest.mark.parametrize("setting", ["yes", "on", "2"])
def test_a_bad_setting_says_what_to_set(setting: str) -> None:
    with pytest.raises(ValueError, match="QWENHOST_CPU_EXTRA_BUFFERS must be 1 .* 0 .* or unset"):
        use_extra_buffers(XEON, setting)


def test_serve_refuses_a_bad_setting(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from qwenhost.cli.main import app

    monkeypatch.setenv("QWENHOST_HOME", str(tmp_path))
    monkeypatch.setenv("QWENHOST_CPU_EXTRA_BUFFERS", "yes")
    result = CliRunner().invoke(app, ["serve", "--model", "echo", "--host", "256.0.0.1"])  # never binds
    assert result.exit_code == 2 and "QWENHOST_CPU_EXTRA_BUFFERS must be" in result.output

