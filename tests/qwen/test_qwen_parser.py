"""Golden tests for the Qwen output parser.

Each tests/data/qwen/streams/NAME.txt is a model output (synthetic, written in the shape Qwen2.5,
Qwen3, Qwen3.5 and Qwen3-Coder produce); NAME.json holds the parser options and the expected
message. Every stream must give the same result whole, split at every character boundary, and fed
in chunks of 1, 2, 3, 5 and 17 characters.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from qwenhost.qwen.events import (
    ContentDelta,
    ParsedMessage,
    ReasoningDelta,
    ToolCallArgs,
    ToolCallStart,
    merge_events,
)
from qwenhost.qwen.parser import StreamParser, parse_completion

DATA = Path(__file__).resolve().parents[1] / "data" / "qwen"
TOOLS: dict[str, dict] = json.loads((DATA / "tools.json").read_text())
GOLDEN = sorted(p.stem for p in (DATA / "streams").glob("*.txt"))


def ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def load(name: str) -> tuple[str, dict, dict]:
    text = (DATA / "streams" / f"{name}.txt").read_text()
    meta = json.loads((DATA / "streams" / f"{name}.json").read_text())
    opts = dict(meta["options"])
    opts["tools"] = [TOOLS[t] for t in opts["tools"]] if opts["tools"] is not None else None
    return text, opts, meta["expected"]


def as_expected(msg: ParsedMessage) -> dict:
    calls = []
    for c in msg.tool_calls:
        args = json.loads(c.arguments)
        assert isinstance(args, dict)
        assert c.arguments == json.dumps(args, ensure_ascii=False)
        calls.append({"id": c.id, "name": c.name, "arguments": args})
    return {"reasoning": msg.reasoning, "content": msg.content, "tool_calls": calls}


def stream(text: str, opts: dict, chunks: list[str]) -> ParsedMessage:
    parser = StreamParser(id_factory=ids(), **opts)
    events = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.finish()
    assert parser.tool_call_count == len([e for e in events if isinstance(e, ToolCallStart)])
    return merge_events(events)


def test_goldens_present() -> None:
    assert len(GOLDEN) >= 25


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_whole(name: str) -> None:
    text, opts, expected = load(name)
    assert as_expected(parse_completion(text, id_factory=ids(), **opts)) == expected


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_every_split(name: str) -> None:
    text, opts, _ = load(name)
    whole = parse_completion(text, id_factory=ids(), **opts)
    for cut in range(len(text) + 1):
        assert stream(text, opts, [text[:cut], text[cut:]]) == whole, f"split at {cut}"
    for size in (1, 2, 3, 5, 17, len(text) or 1):
        chunks = [text[i:i + size] for i in range(0, len(text), size)]
        assert stream(text, opts, chunks) == whole, f"chunk size {size}"


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_no_markup_leaks_while_streaming(name: str) -> None:
    """Character by character, what was emitted so far is always a prefix of the final text:
    nothing (like a partial tag) is sent and later turns out to be markup."""
    text, opts, expected = load(name)
    parser = StreamParser(id_factory=ids(), **opts)
    content = reasoning = ""
    for ch in text:
        for ev in parser.feed(ch):
            if isinstance(ev, ContentDelta):
                content += ev.text
            elif isinstance(ev, ReasoningDelta):
                reasoning += ev.text
        assert (expected["content"] or "").startswith(content)
        assert (expected["reasoning"] or "").startswith(reasoning)


W_TOOLS = [TOOLS["get_weather"], TOOLS["search"]]
PARIS = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def test_partial_tags_are_held_back() -> None:
    p = StreamParser(tools=W_TOOLS, thinking_open=False, id_factory=ids())
    assert p.feed("Hello <") == [ContentDelta("Hello")]
    assert p.feed("tool") == []
    assert p.feed("_ca") == []
    assert p.feed("ll>\n" + PARIS + "\n</tool_") == []
    assert p.feed("call>") == [ToolCallStart(0, "call_0", "get_weather"), ToolCallArgs(0, '{"city": "Paris"}')]
    assert p.tool_call_count == 1
    assert p.finish() == []


def test_think_close_split() -> None:
    p = StreamParser(tools=None, thinking_open=True)
    assert p.feed("abc </thi") == [ReasoningDelta("abc")]
    assert p.feed("nk>\n\nHi") == [ContentDelta("Hi")]
    assert p.finish() == []


def test_leading_think_split() -> None:
    p = StreamParser(tools=None, thinking_open=False)
    assert p.feed("\n<thi") == []
    assert p.feed("nk>\nx") == [ReasoningDelta("x")]
    assert p.finish() == []


def test_whitespace_before_text_is_released() -> None:
    p = StreamParser(tools=None, thinking_open=False)
    assert p.feed("a  ") == [ContentDelta("a")]
    assert p.feed("b") == [ContentDelta("  b")]
    assert p.finish() == []


def test_finish_flushes_partial_tag() -> None:
    p = StreamParser(tools=W_TOOLS, thinking_open=False)
    assert p.feed("a <tool") == [ContentDelta("a")]
    assert p.finish() == [ContentDelta(" <tool")]


def test_fence_held_until_decided() -> None:
    p = StreamParser(tools=W_TOOLS, thinking_open=False, id_factory=ids())
    assert p.feed("Sure:\n``") == [ContentDelta("Sure:")]
    assert p.feed("`json\n" + PARIS[:20]) == []
    assert p.feed(PARIS[20:] + "\n``") == []
    assert p.feed("`\n") == [ToolCallStart(0, "call_0", "get_weather"), ToolCallArgs(0, '{"city": "Paris"}')]
    assert p.finish() == []


def test_fence_released_verbatim_when_not_a_call() -> None:
    p = StreamParser(tools=W_TOOLS, thinking_open=False)
    block = '```json\n{"name": "other", "arguments": {}}\n```'
    assert p.feed(block[:-1]) == []
    assert p.feed(block[-1]) == [ContentDelta(block)]


def test_code_block_streams_without_waiting() -> None:
    p = StreamParser(tools=W_TOOLS, thinking_open=False)
    events = p.feed("```python\nx = 1")
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == "```python\nx = 1"


def test_think_tags_after_the_start_are_text() -> None:
    # Only the output's start (or the prompt) opens reasoning; later tags are what the model wrote.
    for text in ("Answer</think> more", "Hi.\n<think>quoted</think>\n\nBye."):
        assert parse_completion(text, tools=None, thinking_open=False) == ParsedMessage(None, text, [])


def test_reasoning_is_never_reopened() -> None:
    msg = parse_completion("a</think>b<think>c</think>d", tools=None, thinking_open=True)
    assert msg == ParsedMessage(reasoning="a", content="b<think>c</think>d", tool_calls=[])


def test_empty_output() -> None:
    for thinking_open in (False, True):
        assert parse_completion("", tools=None, thinking_open=thinking_open) == ParsedMessage(None, None, [])


def test_default_ids_unique_and_openai_shaped() -> None:
    text = "".join(f"<tool_call>\n{PARIS}\n</tool_call>" for _ in range(3))
    msg = parse_completion(text, tools=W_TOOLS, thinking_open=False)
    assert [c.name for c in msg.tool_calls] == ["get_weather"] * 3
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", c.id) for c in msg.tool_calls)
    assert len({c.id for c in msg.tool_calls}) == 3


def test_indices_increment_when_streamed() -> None:
    p = StreamParser(tools=W_TOOLS, thinking_open=False, id_factory=ids())
    events = []
    for part in (f"<tool_call>\n{PARIS}\n</tool_call>\n", f"<tool_call>\n{PARIS}\n</tool_call>"):
        events += p.feed(part)
    events += p.finish()
    assert [(type(e).__name__, e.index) for e in events] == [
        ("ToolCallStart", 0), ("ToolCallArgs", 0), ("ToolCallStart", 1), ("ToolCallArgs", 1)]


def test_tools_none_accepts_any_name() -> None:
    msg = parse_completion('<tool_call>\n{"name": "anything", "arguments": {"a": 1}}\n</tool_call>',
                           tools=None, thinking_open=False, id_factory=ids())
    assert [(c.name, c.arguments) for c in msg.tool_calls] == [("anything", '{"a": 1}')]


def test_hermes_body_in_xml_mode_and_back() -> None:
    xml = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
    hermes = f"<tool_call>\n{PARIS}\n</tool_call>"
    for text, fmt in ((xml, "hermes"), (hermes, "xml")):
        msg = parse_completion(text, tools=W_TOOLS, thinking_open=False, tool_format=fmt, id_factory=ids())
        assert [(c.name, json.loads(c.arguments)) for c in msg.tool_calls] == [("get_weather", {"city": "Paris"})]


def test_tag_inside_argument_string_is_data() -> None:
    body = '{"name": "search", "arguments": {"query": "what does <tool_call> mean"}}'
    msg = parse_completion(f"<tool_call>\n{body}\n</tool_call>", tools=W_TOOLS, thinking_open=False,
                           id_factory=ids())
    assert json.loads(msg.tool_calls[0].arguments) == {"query": "what does <tool_call> mean"}
