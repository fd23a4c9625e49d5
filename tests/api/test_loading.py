"""Before the model is loaded (or when it failed to load) the API answers 503 with the reason."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn

from qwenhost.api.app import create_app
from qwenhost.api.state import ServerState
from tests.conftest import free_port


def serve_state(state: ServerState) -> tuple[uvicorn.Server, str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    return server, base


def test_loading_and_failed_load_answer_503(tmp_path):
    from qwenhost.gateway.db import Database
    from qwenhost.gateway.service import Gateway

    gateway = Gateway(Database(f"sqlite:///{tmp_path / 'gw.db'}"))
    gateway.configure_auth("127.0.0.1")
    state = ServerState(model_id="qwen2.5-coder:0.5b", gateway=gateway)
    server, base = serve_state(state)
    try:
        body = {"model": "qwen2.5-coder:0.5b", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(base + "/v1/chat/completions", json=body)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert "loading" in r.json()["error"]["message"]
        assert httpx.get(base + "/health").status_code == 503
        assert httpx.get(base + "/v1/models").json()["data"][0]["id"] == "qwen2.5-coder:0.5b"
        state.load_error = "out of memory"
        r = httpx.post(base + "/v1/chat/completions", json=body)
        assert r.status_code == 503 and "out of memory" in r.json()["error"]["message"]
    finally:
        server.should_exit = True
