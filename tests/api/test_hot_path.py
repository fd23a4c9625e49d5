"""The completion routes' direct path (qwenhost/api/hot_path.py) and the SSE encoding (qwenhost/api/sse.py)."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from qwenhost.api.app import create_app
from qwenhost.api.hot_path import HOT_PATHS, HotRoutes
from qwenhost.api.routes_openai import router as openai_router
from qwenhost.api.sse import EventStream, EventTemplate, sse_event
from qwenhost.api.state import ServerState
from qwenhost.gateway.db import Database
from qwenhost.gateway.service import Gateway
from qwenhost.router.echo import ECHO_MODEL, EchoBackend
from qwenhost.router.openai_types import ChatCompletionRequest, CompletionRequest
from tests.api.test_loading import serve_state


@pytest.fixture()
def echo_server(tmp_path):  # type: ignore[no-untyped-def]
    gateway = Gateway(Database(f"sqlite:///{tmp_path / 'gw.db'}"))
    gateway.configure_auth("127.0.0.1")
    state = ServerState(model_id=ECHO_MODEL, gateway=gateway)
    state.set_backend(EchoBackend())
    server, base = serve_state(state)
    yield base
    server.should_exit = True


@pytest.mark.parametrize("text", ["", "plain", 'quote " and \\ backslash', "new\nline\ttab", "ünïcödé 你好 🙂",
                                  "\x00 nul and \x1f control", "</script>", "\u2028\u2029"])
def test_event_template_is_byte_for_byte_the_encoded_object(text: str) -> None:
    def build(t: str) -> dict:
        return {"id": "chatcmpl-1", "model": 'm"x', "choices": [{"index": 0, "delta": {"content": t},
                                                                  "finish_reason": None}], "usage": None}

    assert EventTemplate(build).make(text) == sse_event(build(text))
    assert json.loads(EventTemplate(build).make(text)[len(b"data: "):])["choices"][0]["delta"]["content"] == text


def test_event_template_needs_its_string_once() -> None:
    with pytest.raises(ValueError):
        EventTemplate(lambda t: {"a": "fixed"})
    with pytest.raises(ValueError):
        EventTemplate(lambda t: {"a": t, "b": t})


def test_the_direct_path_finds_both_completion_routes(tmp_path) -> None:
    # If FastAPI changes how routers keep their routes, this fails instead of the direct path going quietly unused.
    app = create_app(ServerState(model_id=ECHO_MODEL, gateway=Gateway(Database(f"sqlite:///{tmp_path / 'g.db'}"))))
    hot = HotRoutes(app, fastapi_app=app, router=openai_router, paths=HOT_PATHS)._hot()
    assert {p: m for p, (_, m, _) in hot.items()} == {"/v1/chat/completions": ChatCompletionRequest,
                                                       "/v1/completions": CompletionRequest}


def test_direct_and_fallback_answers(echo_server: str) -> None:
    client = openai.OpenAI(base_url=echo_server + "/v1", api_key="none")
    r = client.chat.completions.create(model=ECHO_MODEL, messages=[{"role": "user", "content": "one two"}])
    assert r.choices[0].message.content == "one two" and r.usage.completion_tokens == 2
    chunks = list(client.completions.create(model=ECHO_MODEL, prompt="a b c", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "a b c"
    # Errors raised inside the endpoint go through the app's handlers: the same shape as FastAPI's.
    r404 = httpx.post(echo_server + "/v1/chat/completions", json={"model": "nope", "messages": [
        {"role": "user", "content": "x"}]})
    assert r404.status_code == 404 and r404.json()["error"]["code"] == "model_not_found"
    # Not JSON by its content type, invalid JSON, a failing body: FastAPI answers, with its messages.
    body = json.dumps({"model": ECHO_MODEL, "messages": [{"role": "user", "content": "x"}]})
    r = httpx.post(echo_server + "/v1/chat/completions", content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 400 and "'Content-Type: application/json'" in r.json()["error"]["message"]
    r = httpx.post(echo_server + "/v1/chat/completions", content=body[:-1],
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(echo_server + "/v1/chat/completions", json={"model": ECHO_MODEL, "messages": []})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    # A JSON subtype is JSON to both paths.
    r = httpx.post(echo_server + "/v1/chat/completions", content=body,
                   headers={"content-type": "application/vnd.api+json; charset=utf-8"})
    assert r.status_code == 200, r.text
    # Both paths count their responses under the route's path.
    metrics = httpx.get(echo_server + "/metrics").text
    assert 'qwenhost_http_requests_total{route="/v1/chat/completions",status="200"} 2.0' in metrics
    assert 'qwenhost_http_requests_total{route="/v1/chat/completions",status="400"} 3.0' in metrics
    assert 'qwenhost_http_requests_total{route="/v1/chat/completions",status="404"} 1.0' in metrics
    assert 'qwenhost_http_requests_total{route="/v1/completions",status="200"} 1.0' in metrics


def test_event_stream_cleans_up_when_the_client_leaves() -> None:
    """The client leaves while the body waits for its next event: the wait is cancelled, clean-up runs once,
    and the response returns normally (the server is not stopping)."""
    events: list[str] = []

    async def body():  # type: ignore[no-untyped-def]
        try:
            yield b"data: 1\n\n"
            await asyncio.sleep(60)  # a backend that has nothing yet
            yield b"data: never\n\n"
        finally:
            events.append("body closed")

    async def cleanup() -> None:
        events.append("cleanup")

    async def scenario() -> list[dict]:
        sent: list[dict] = []
        left = asyncio.Event()

        async def receive() -> dict:
            await left.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
            if message.get("body") == b"data: 1\n\n":
                asyncio.get_running_loop().call_later(0.05, left.set)

        await asyncio.wait_for(EventStream(body(), cleanup)({"type": "http"}, receive, send), 5)
        return sent

    sent = asyncio.run(scenario())
    assert [m.get("body") for m in sent] == [None, b"data: 1\n\n"]
    assert events == ["body closed", "cleanup"]


def test_event_stream_passes_on_a_server_cancel() -> None:
    events: list[str] = []

    async def body():  # type: ignore[no-untyped-def]
        yield b"data: 1\n\n"
        await asyncio.sleep(60)

    async def cleanup() -> None:
        events.append("cleanup")

    async def scenario() -> None:
        async def receive() -> dict:
            await asyncio.sleep(60)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            pass

        task = asyncio.ensure_future(EventStream(body(), cleanup)({"type": "http"}, receive, send))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert events == ["cleanup"]


def test_fastapi_telemetry_is_on_only_where_opentelemetry_is_set_up() -> None:
    from qwenhost.api.app import fastapi_telemetry

    assert fastapi_telemetry({"PATH": "/bin"}) == {"tracing": False, "metrics": False, "logs": False}
    assert fastapi_telemetry({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) is None
    assert fastapi_telemetry({"FASTAPI_OTEL_AUTO_CONFIGURE": "true"}) is None


def _run_stream(body, receive=None):  # type: ignore[no-untyped-def]
    """Run an EventStream to its end; the bodies of its messages, None for the start."""
    sent: list[bytes | None] = []

    async def never() -> dict:
        await asyncio.sleep(60)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message.get("body"))

    async def cleanup() -> None:
        pass

    async def scenario() -> None:
        await asyncio.wait_for(EventStream(body, cleanup)({"type": "http"}, receive or never, send), 5)

    asyncio.run(scenario())
    return sent


def test_events_made_at_once_go_out_in_one_write() -> None:
    async def burst():  # type: ignore[no-untyped-def]
        for i in range(5):
            yield f"data: {i}\n\n".encode()

    assert _run_stream(burst()) == [None, b"data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n", b""]


def test_events_made_apart_go_out_apart() -> None:
    async def tokens():  # type: ignore[no-untyped-def]
        for i in range(3):
            yield f"data: {i}\n\n".encode()
            await asyncio.sleep(0.01)  # the next token is not there yet

    assert _run_stream(tokens()) == [None, b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]


def test_an_instant_body_runs_ahead_only_so_far_and_lets_the_loop_turn() -> None:
    from qwenhost.api.sse import READ_AHEAD_BYTES

    assert 4096 <= READ_AHEAD_BYTES <= 64 * 1024  # a millisecond or so of an instant body's work, not more
    turns: list[int] = []
    event = b"data: " + b"x" * 1000 + b"\n\n"
    count = 3 * READ_AHEAD_BYTES // len(event) + 1  # more than three read-aheads, never waiting
    made = 0

    async def instant():  # type: ignore[no-untyped-def]
        nonlocal made
        for _ in range(count):
            made += 1
            yield event

    async def ticker() -> dict:  # runs whenever the loop turns; records how far the body had got
        while made < count:
            turns.append(made)
            await asyncio.sleep(0)
        await asyncio.sleep(60)
        return {"type": "http.disconnect"}

    sent = _run_stream(instant(), ticker)
    writes = [b for b in sent[1:-1] if b]
    assert b"".join(writes) == event * count
    assert len(writes) >= 3
    assert all(len(b) < READ_AHEAD_BYTES + len(event) for b in writes)
    assert len(set(turns)) >= len(writes) - 1  # the loop turned between the bursts, not only at the end


def test_a_body_that_fails_sends_what_it_made_then_raises() -> None:
    async def failing():  # type: ignore[no-untyped-def]
        yield b"data: 1\n\n"
        raise RuntimeError("backend broke")

    sent: list[bytes | None] = []

    async def send(message: dict) -> None:
        sent.append(message.get("body"))

    async def receive() -> dict:
        await asyncio.sleep(60)
        return {"type": "http.disconnect"}

    async def cleanup() -> None:
        sent.append(b"cleanup")

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="backend broke"):
            await EventStream(failing(), cleanup)({"type": "http"}, receive, send)

    asyncio.run(scenario())
    assert sent == [None, b"data: 1\n\n", b"cleanup"]


def test_empty_chunks_cannot_hold_the_loop() -> None:
    turns = 0
    made = 0

    async def empties():  # type: ignore[no-untyped-def]
        nonlocal made
        for _ in range(5000):
            made += 1
            yield b""

    async def ticker() -> dict:
        nonlocal turns
        while made < 5000:
            turns += 1
            await asyncio.sleep(0)
        await asyncio.sleep(60)
        return {"type": "http.disconnect"}

    _run_stream(empties(), ticker)
    assert turns >= 5000 * 64 // (16 * 1024)  # each chunk counts for 64 bytes at least


def _client_leaves_then(after_leaving, body, send_s: float = 0.02):  # type: ignore[no-untyped-def]
    """Run a stream whose client leaves 30 ms in; `after_leaving(task)` runs right after. Returns the events,
    the loop's unhandled-exception reports and how the response ended."""
    events: list[str] = []
    reports: list[dict] = []

    async def scenario() -> str:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reports.append(ctx))
        gone = asyncio.Event()

        async def send(message: dict) -> None:
            if send_s and message.get("more_body"):
                await asyncio.sleep(send_s)  # a slow client

        async def receive() -> dict:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def cleanup() -> None:
            events.append("cleanup")

        task = asyncio.ensure_future(EventStream(body(events), cleanup)({"type": "http"}, receive, send))
        await asyncio.sleep(0.03)
        gone.set()
        await after_leaving(task)
        try:
            await task
            outcome = "returned"
        except asyncio.CancelledError:
            outcome = "cancelled"
        await asyncio.sleep(0.01)
        return outcome

    outcome = asyncio.run(scenario())
    return events, reports, outcome


def test_a_body_failing_after_the_client_left_is_logged_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    async def body(events):  # type: ignore[no-untyped-def]
        yield b"data: 1\n\n"
        await asyncio.sleep(0.01)  # fails while the response is still sending to the slow client
        raise RuntimeError("backend broke")

    async def nothing(_task) -> None:  # type: ignore[no-untyped-def]
        pass

    events, reports, outcome = _client_leaves_then(nothing, body, send_s=0.05)
    assert outcome == "returned" and events == ["cleanup"]
    assert reports == []  # no "Task exception was never retrieved"
    assert "backend broke" in caplog.text


def test_a_server_cancel_in_the_turn_the_client_leaves_still_stops_the_response() -> None:
    async def body(events):  # type: ignore[no-untyped-def]
        while True:
            await asyncio.sleep(0.005)
            yield b"data: x\n\n"

    async def cancel_now(task) -> None:  # type: ignore[no-untyped-def]
        task.cancel()  # before the watcher has run: two cancels, one delivered

    events, _reports, outcome = _client_leaves_then(cancel_now, body, send_s=0)
    assert outcome == "cancelled" and events == ["cleanup"]


def test_a_cancel_during_the_teardown_still_bills_before_it_ends() -> None:
    async def body(events):  # type: ignore[no-untyped-def]
        try:
            while True:
                yield b"x" * 1000  # an instant body, held back by the read-ahead
        finally:
            events.append("body finally")

    async def cancel_in_teardown(task) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)  # the watcher cancels the response
        await asyncio.sleep(0)  # the response is in its finally, waiting for the body to stop
        task.cancel()

    events, _reports, outcome = _client_leaves_then(cancel_in_teardown, body)
    assert outcome == "cancelled"
    assert events == ["body finally", "cleanup"]  # both before the cancel ended the response
