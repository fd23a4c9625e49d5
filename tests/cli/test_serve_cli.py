"""`qwenhost serve` refuses bad options before it loads anything: exit 2 with a line naming the option."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from qwenhost.cli.main import app


@pytest.mark.parametrize("port", ["0", "65536", "99999", "-1"])
def test_serve_refuses_a_port_out_of_range(port: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("QWENHOST_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["serve", "--model", "echo", "--port", port])
    assert result.exit_code == 2 and "--port" in result.output


def test_serve_says_a_port_is_busy_before_loading_anything(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("QWENHOST_HOME", str(tmp_path))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port)])  # the default model: never loaded
    assert result.exit_code == 2 and "already in use" in result.output
    assert not (tmp_path / "qwenhost.db").exists()  # refused before the gateway opened its database


def test_serve_refuses_an_address_it_cannot_listen_on(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("QWENHOST_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["serve", "--model", "echo", "--host", "256.0.0.1"])
    assert result.exit_code == 2 and "cannot listen on" in result.output


def test_serve_s_default_itl_target_is_the_scheduler_s() -> None:
    from qwenhost.cli.main import DEFAULT_ITL_TARGET, parse_itl_target
    from qwenhost.engine.scheduler import DEFAULT_ITL_RATIO, SchedulerConfig

    assert parse_itl_target(DEFAULT_ITL_TARGET) == (None, DEFAULT_ITL_RATIO)
    assert SchedulerConfig().itl_target_ratio == DEFAULT_ITL_RATIO
    assert parse_itl_target(" 1.5 ") == (1.5, None)
    for bad in ("1.1x", "fast", "0.01"):
        with pytest.raises(ValueError, match="--itl-target must be"):
            parse_itl_target(bad)
