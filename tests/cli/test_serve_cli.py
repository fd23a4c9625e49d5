"""`qwenhost serve` refuses bad options before it loads anything: exit 2 with a line naming the option."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from qwenhost.cli.main import app


@pytest.mark.parametrize("port", ["0", "65536", "99999", "-1"])
def test_serve_refuses_a_port_out_of_range(port: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("QWENHOST_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["serve", "--model", "echo", "--port", port])
    assert result.exit_code == 2 and "--port" in result.output
