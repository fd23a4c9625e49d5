"""Thinking and Qwen3.5's XML tool calls end to end: the 0.5B model served with the official Qwen3.5 template.

No Qwen3 weights are reachable here, so the small Qwen2.5 model stands in: the template, prompt rendering,
parser start state, thinking budget, grammar pause and XML call parsing are what is under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.conftest import ServerProcess

MODEL = "qwen2.5-coder:0.5b"
TEMPLATE = Path(__file__).parent.parent / "data" / "qwen" / "templates" / "Qwen3.5-4B.jinja"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                           "days": {"type": "integer"}},
                          "required": ["city", "days"]}}}


@pytest.fixture(scope="module")
def qwen35(small_model_path):
    srv = ServerProcess(["--parallel", "2", "--ctx-size", "8192", "--chat-template", str(TEMPLATE)],
                        small_model_path)
    yield openai.OpenAI(base_url=srv.base + "/v1", api_key="x", max_retries=0, timeout=600)
    srv.stop()


def ask(client, **kw):
    return client.chat.completions.create(model=MODEL, temperature=0, **kw)


def test_budget_closes_reasoning_and_the_answer_follows(qwen35):
    r = ask(qwen35, messages=[{"role": "user", "content": "Why is the sky blue? Explain."}], max_tokens=80,
            extra_body={"thinking_budget": 8})
    msg = r.choices[0].message
    reasoning = msg.model_extra.get("reasoning_content") or ""
    assert "Considering the limited time" in reasoning
    assert msg.content and "<think>" not in msg.content and "</think>" not in msg.content


def test_thinking_off_gives_no_reasoning(qwen35):
    r = ask(qwen35, messages=[{"role": "user", "content": "Say hello."}], max_tokens=30,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    msg = r.choices[0].message
    assert not msg.model_extra.get("reasoning_content")
    assert msg.content


def test_streamed_reasoning_comes_before_content(qwen35):
    stream = ask(qwen35, messages=[{"role": "user", "content": "What is 12 times 12?"}], max_tokens=60,
                 stream=True, extra_body={"thinking_budget": 6})
    kinds = []
    for chunk in stream:
        for c in chunk.choices:
            extra = c.delta.model_extra or {}
            if extra.get("reasoning_content"):
                kinds.append("r")
            if c.delta.content:
                kinds.append("c")
    assert kinds and kinds[0] == "r" and "c" in kinds
    assert "r" not in kinds[kinds.index("c"):]


def test_required_xml_call_after_thinking(qwen35):
    r = ask(qwen35, messages=[{"role": "user", "content": "Weather in Lyon for the next 3 days?"}],
            tools=[WEATHER], tool_choice="required", max_tokens=120, extra_body={"thinking_budget": 8})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert call.function.name == "get_weather"
    assert isinstance(args["city"], str) and isinstance(args["days"], int)  # typed by the schema
    assert "Considering the limited time" in (choice.message.model_extra.get("reasoning_content") or "")
