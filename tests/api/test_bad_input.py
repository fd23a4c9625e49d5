"""Bad input always gets a 4xx that says what to fix, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

MODEL = "qwen2.5-coder:0.5b"
USER = [{"role": "user", "content": "hi"}]


def post(server, body=None, *, content=None, headers=None, path="/v1/chat/completions"):
    return httpx.post(server.base + path, json=body, content=content, headers=headers, timeout=60)


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL}, 400, "messages"),
    ({"messages": USER}, 400, "model"),
    ({"model": MODEL, "messages": "hello"}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
    ({"model": MODEL, "messages": [{"role": "user"}]}, 400, "content"),
    ({"model": MODEL, "messages": [{"role": "user", "content": 42}]}, 400, "content"),
    ({"model": MODEL, "messages": USER, "temperature": "hot"}, 400, "temperature"),
    ({"model": MODEL, "messages": USER, "temperature": 7}, 400, "temperature"),
    ({"model": MODEL, "messages": USER, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "messages": USER, "n": 3}, 400, "n"),
    ({"model": MODEL, "messages": USER, "repeat_last_n": -2}, 400, "repeat_last_n"),
    ({"model": MODEL, "messages": USER, "repeat_last_n": "all"}, 400, "repeat_last_n"),
    ({"model": MODEL, "messages": USER, "logit_bias": {"abc": 1}}, 400, "logit_bias"),
    ({"model": MODEL, "messages": USER, "logit_bias": {"99999999": 1}}, 400, "vocabulary"),
    ({"model": MODEL, "messages": USER, "tool_choice": "required"}, 400, "tools"),
    ({"model": MODEL, "messages": USER, "tools": [{"type": "function", "function": {"name": "bad name!"}}]},
     400, "tools"),
    ({"model": MODEL, "messages": USER, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "string"}}}]}, 400, "parameters"),
    ({"model": MODEL, "messages": USER, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "nonsense"}}}}}]}, 400, "tools"),
    ({"model": MODEL, "messages": USER, "response_format": {"type": "json_schema"}}, 400, "schema"),
    ({"model": MODEL, "messages": USER, "enable_thinking": "yes"}, 400, "enable_thinking"),
    ({"model": MODEL, "messages": USER, "chat_template_kwargs": {"enable_thinking": "false"}}, 400, "boolean"),
    ({"model": "no-such-model", "messages": USER}, 404, "no-such-model"),
    ({"model": MODEL, "messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}, 400, "JSON"),
])
def test_bad_request_is_4xx_with_reason(server, body, status, fragment):
    r = post(server, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment.lower() in err["message"].lower(), err
    assert err["type"]


def test_invalid_json_and_utf8(server):
    r = post(server, content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = post(server, content=b'{"model": "\xff\xfe", "messages": []}', headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = post(server, content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_a_form_body_is_told_to_send_json(server):
    """curl -d without a content type sends a form: say which header is missing, not that JSON is wrong."""
    r = post(server, content=b'{"model": "x", "messages": []}',
             headers={"content-type": "application/x-www-form-urlencoded"})
    message = r.json()["error"]["message"]
    assert r.status_code == 400 and "Content-Type: application/json" in message
    assert "application/x-www-form-urlencoded" in message


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/admin/projects"])
def test_json_nested_too_deeply_is_400(server, path):
    for body in (b"[" * 100_000 + b"]" * 100_000,
                 b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "tools": '
                 + b"[" * 5_000 + b"]" * 5_000 + b"}"):
        r = post(server, content=body, headers={"content-type": "application/json"}, path=path)
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"], r.text


def test_body_over_limit_is_413(server):
    big = "x" * (9 * 2**20)
    r = post(server, {"model": MODEL, "messages": [{"role": "user", "content": big}]})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/admin/projects"])
def test_body_over_limit_in_chunks_is_413(server, path):
    """Without a Content-Length (chunked transfer) the limit is counted as the body arrives."""
    def chunks():
        yield b'{"model": "x", "messages": [{"role": "user", "content": "'
        for _ in range(9):
            yield b"x" * 2**20
        yield b'"}]}'

    r = post(server, content=chunks(), headers={"content-type": "application/json"}, path=path)
    assert r.status_code == 413 and "limit of 8388608 bytes" in r.json()["error"]["message"], r.text


def test_completions_bad_input(server):
    r = post(server, {"model": MODEL, "prompt": ["a", "b"]}, path="/v1/completions")
    assert r.status_code == 400 and "prompt" in r.json()["error"]["message"]
    r = post(server, {"model": MODEL, "prompt": ""}, path="/v1/completions")
    assert r.status_code == 400


def test_server_still_serves_after_bad_input(server):
    r = post(server, {"model": MODEL, "messages": USER, "max_tokens": 4})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
