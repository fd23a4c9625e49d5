from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwenhost.cli.models import models_app


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


def test_list_empty(runner: CliRunner, qh_home: Path) -> None:
    result = runner.invoke(models_app, ["list"])
    assert result.exit_code == 0, result.output
    assert "No models downloaded yet" in result.output
    assert "qwen2.5-coder:1.5b" in result.output  # hint about what can be pulled


def test_list_shows_local_models(runner: CliRunner, qh_home: Path, make_gguf: Callable[..., Path]) -> None:
    models = qh_home / "models"
    make_gguf(models / "tiny-test.gguf", size_label="0.1B")
    (models / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    result = runner.invoke(models_app, ["list"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "tiny-test.gguf" in line)
    for cell in ("qwen2", "0.1B", "Q4_K_M", "4096", "yes"):
        assert cell in row
    assert "unreadable" in next(line for line in result.output.splitlines() if "broken.gguf" in line)


def test_pull_local_path_prints_it(runner: CliRunner, qh_home: Path, tmp_path: Path, make_gguf) -> None:
    path = make_gguf(tmp_path / "m.gguf")
    result = runner.invoke(models_app, ["pull", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(str(path.resolve()))


def test_show(runner: CliRunner, qh_home: Path, tmp_path: Path, make_gguf) -> None:
    path = make_gguf(tmp_path / "m.gguf", sampling={"top_k": 20})
    result = runner.invoke(models_app, ["show", str(path)])
    assert result.exit_code == 0, result.output
    assert "qwen2" in result.output and "4096" in result.output and "top_k" in result.output


@pytest.mark.parametrize(
    "args", [["pull", "no-such-model"], ["pull", "/nonexistent/x.gguf"], ["show", "hf:bad"]]
)
def test_errors_exit_2_without_traceback(runner: CliRunner, qh_home: Path, args: list[str]) -> None:
    result = runner.invoke(models_app, args)
    assert result.exit_code == 2
    assert "error:" in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
