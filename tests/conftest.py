"""Shared fixtures: the small real model and a real `qwenhost serve` process on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

SMALL_MODEL = "qwen2.5-coder:0.5b"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def small_model_path() -> Path:
    from qwenhost.engine.sources import resolve_model

    return resolve_model(SMALL_MODEL, progress=False)


def _tmp_dir() -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp"))


class ServerProcess:
    def __init__(self, args: list[str], model_path: Path | None, *, model: str = SMALL_MODEL,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # Each server gets its own gateway database: no keys in it, so auth is off on loopback.
        self.db_path = _tmp_dir() / f"qwenhost-test-{self.port}.db"
        self.db_path.unlink(missing_ok=True)
        full_env = {**os.environ, "QWENHOST_DATABASE_URL": f"sqlite:///{self.db_path}", "PYTHONUNBUFFERED": "1",
                    **(env or {})}
        cmd = [sys.executable, "-m", "qwenhost", "serve", "--model", model, "--port", str(self.port),
               "--log-level", "warning", *args]
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"qwenhost-test-{self.port}.log", "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"server exited early:\n{self.log.read()}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not become healthy in time")

    def metric(self, name: str) -> float:
        text = httpx.get(self.base + "/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server(small_model_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(["--parallel", "8", "--ctx-size", "16384"], small_model_path)
    yield srv
    srv.stop()


@pytest.fixture()
def client(server: ServerProcess):  # type: ignore[no-untyped-def]
    import openai

    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=300)
