"""The API through the official openai SDK against a real server on the 0.5B model."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

MODEL = "qwen2.5-coder:0.5b"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}


def test_chat_returns_text_and_usage(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France? One word."}],
        max_tokens=16, temperature=0,
    )
    msg = r.choices[0].message
    assert "paris" in msg.content.lower()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 16
    assert r.system_fingerprint.startswith("fp_")
    assert "<|im_end|>" not in msg.content


def test_streaming_matches_and_reports_usage(client):
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Write the word hello three times."}],
                  max_tokens=20, temperature=0, seed=1)
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.content:
                parts.append(ch.delta.content)
            if ch.finish_reason:
                finish = ch.finish_reason
    assert "".join(parts) == full
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0


def test_tool_round_trip(client):
    messages = [{"role": "system", "content": "You are a helpful assistant. After a tool result arrives, answer "
                                              "the user in one plain sentence."},
                {"role": "user", "content": "What is the weather like in Paris right now?"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL], temperature=0,
                                       max_tokens=128)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert "paris" in json.loads(call.function.arguments)["city"].lower()
    assert not choice.message.content or "<tool_call>" not in choice.message.content
    messages.append({"role": "assistant", "content": None, "tool_calls": [call.model_dump()]})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 17, "sky": "sunny"}'})
    # The 0.5B model tends to call the tool again when it still may; "none" asks for the answer.
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL], temperature=0,
                                           tool_choice="none", max_tokens=80)
    text = final.choices[0].message.content
    assert final.choices[0].finish_reason == "stop" and not final.choices[0].message.tool_calls
    assert "17" in text and "{" not in text


def test_tool_choice_required_yields_a_call(client):
    calc = {"type": "function", "function": {"name": "add", "description": "Add two integers",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                           "required": ["a", "b"]}}}
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a joke about cats."}],
        tools=[WEATHER_TOOL, calc], tool_choice="required", temperature=0, max_tokens=100,
    )
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    assert calls and calls[0].function.name in ("get_weather", "add")
    json.loads(calls[0].function.arguments)


def test_named_tool_choice_streams_id_and_name_first(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0, max_tokens=60,
        stream=True,
    )
    deltas = [tc for ch in stream for c in ch.choices for tc in (c.delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function.name == "get_weather"
    args = "".join(d.function.arguments or "" for d in deltas)
    assert "city" in json.loads(args)


def test_json_schema_output_is_valid(client):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                               "languages": {"type": "array", "items": {"type": "string"},
                                                             "maxItems": 4}},
              "required": ["name", "age", "languages"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Invent a programmer and describe them."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        temperature=0, max_tokens=120,
    )
    data = json.loads(r.choices[0].message.content)
    jsonschema.validate(data, schema)  # the grammar also holds maxItems: the 0.5B model would loop on the list
    assert r.choices[0].finish_reason == "stop"


def test_json_object_mode(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Give me a JSON object with a key 'ok'."}],
        response_format={"type": "json_object"}, temperature=0, max_tokens=60,
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_second_turn_reuses_cache(client):
    system = "You are a concise assistant for a bakery. " * 10
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Name one bread."}]
    r1 = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12)
    messages += [{"role": "assistant", "content": r1.choices[0].message.content},
                 {"role": "user", "content": "And one cake?"}]
    r2 = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached >= r1.usage.prompt_tokens - 1, (cached, r1.usage.prompt_tokens)


def test_context_overflow_is_400_with_numbers(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=10_000_000)
    msg = ei.value.body["message"]
    assert "10000000" in msg and "context" in msg


def test_stop_strings_are_not_emitted(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count from 1 to 10 separated by spaces."}],
        stop=["5"], temperature=0, max_tokens=40,
    )
    text = r.choices[0].message.content
    assert "5" not in text and "4" in text
    assert r.choices[0].finish_reason == "stop"


def test_repeat_last_n_sets_the_penalties_window(client):
    """llama-server's and Ollama's repeat_last_n: 0 turns a strong repetition penalty off (the greedy text is the
    unpenalised one), the default window of 64 and -1 (the whole context) apply it."""
    def say(**extra) -> str:
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Write the word cat ten times, separated by spaces."}],
            max_tokens=24, temperature=0, extra_body=extra)
        return r.choices[0].message.content

    plain = say()
    assert plain.lower().count("cat") >= 5
    assert say(repetition_penalty=3.0, repeat_last_n=0) == plain
    penalised = say(repetition_penalty=3.0)
    assert penalised != plain
    assert say(repetition_penalty=3.0, repeat_last_n=-1) != plain


def test_completions_endpoint(client):
    r = client.completions.create(model=MODEL, prompt="def fibonacci(n):", max_tokens=16, temperature=0)
    assert r.choices[0].text.strip()
    assert r.usage.completion_tokens <= 16


def test_models_health_metrics_docs(server, client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == MODEL and len(set(ids)) == len(ids)  # the name it was started with first
    assert httpx.get(server.base + "/health").json()["status"] == "ok"
    metrics = httpx.get(server.base + "/metrics").text
    for name in ("qwenhost_queue_depth", "qwenhost_running_sequences", "qwenhost_completion_tokens_total",
                 "qwenhost_cache_hit_tokens_total", "qwenhost_time_to_first_token_seconds_bucket",
                 "qwenhost_inter_token_latency_seconds_bucket", "qwenhost_http_requests_total"):
        assert name in metrics, name
    assert httpx.get(server.base + "/docs").status_code == 200
    assert "/v1/chat/completions" in httpx.get(server.base + "/openapi.json").json()["paths"]
