"""Tool-call body decoding: XML value typing, repair limits, and the fenced-call schema check."""

from __future__ import annotations

from typing import Any

import pytest

from qwenhost.qwen.jsonshape import schema_accepts
from qwenhost.qwen.toolcalls import (
    coerce_xml_value,
    decode_call_body,
    decode_fenced_body,
    tool_index,
)

STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
ARR = {"type": "array"}
OBJ = {"type": "object"}


@pytest.mark.parametrize(("raw", "schema", "expected"), [
    ("Paris", STR, "Paris"),
    ("42", STR, "42"),  # a string parameter stays text even when it looks like a number
    ("true", STR, "true"),
    ("42", INT, 42),
    ("-7", INT, -7),
    ("4.5", INT, "4.5"),  # not an integer: left as the model wrote it
    ("4.5", NUM, 4.5),
    ("3", NUM, 3),
    ("1e3", NUM, 1000.0),
    ("nan", NUM, "nan"),
    ("True", BOOL, True),
    ("false", BOOL, False),
    ("yes", BOOL, "yes"),
    ("null", {"type": ["string", "null"]}, None),
    ("null", STR, "null"),
    ("[1, 2]", ARR, [1, 2]),
    ('{"a": 1}', OBJ, {"a": 1}),
    ("{'a': 1,}", OBJ, {"a": 1}),
    ("[1, 2]", OBJ, "[1, 2]"),  # wrong container type: text
    ("7", {"anyOf": [INT, STR]}, 7),
    ("seven", {"anyOf": [INT, STR]}, "seven"),
    ("12", {"enum": [12, 13]}, 12),
    ("12", None, "12"),  # undeclared parameter: text
    (" 12 ", INT, 12),
])
def test_coerce_xml_value(raw: str, schema: Any, expected: Any) -> None:
    value = coerce_xml_value(raw, schema)
    assert value == expected and type(value) is type(expected)


TOOLS = tool_index([
    {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": INT, "b": STR}, "required": ["a"], "additionalProperties": False}}},
    {"name": "g", "parameters": {"type": "object", "properties": {"items": {"type": "array", "items": INT}}}},
])


def test_tool_index_accepts_both_shapes() -> None:
    assert TOOLS is not None and set(TOOLS) == {"f", "g"}
    assert tool_index(None) is None and tool_index([]) is None


@pytest.mark.parametrize(("value", "ok"), [
    ({"a": 1}, True),
    ({"a": 1, "b": "x"}, True),
    ({"a": 1.0}, True),
    ({"b": "x"}, False),  # required missing
    ({"a": "1"}, False),  # wrong type
    ({"a": True}, False),  # bool is not an integer
    ({"a": 1, "c": 2}, False),  # additionalProperties false
])
def test_schema_accepts_object(value: dict, ok: bool) -> None:
    assert TOOLS is not None
    assert schema_accepts(value, TOOLS["f"]) is ok


def test_schema_accepts_misc() -> None:
    assert schema_accepts({"items": [1, 2]}, TOOLS["g"])  # type: ignore[index]
    assert not schema_accepts({"items": [1, "2"]}, TOOLS["g"])  # type: ignore[index]
    assert schema_accepts("c", {"enum": ["c", "f"]})
    assert not schema_accepts("k", {"enum": ["c", "f"]})
    assert schema_accepts(None, {"type": ["string", "null"]})
    assert schema_accepts(3, {"anyOf": [STR, INT]})
    assert not schema_accepts(3.5, {"oneOf": [STR, INT]})
    assert schema_accepts({"x": 1}, {"$ref": "#/defs/x"})  # unknown: accepted
    assert schema_accepts({"x": 1}, {"type": "object", "additionalProperties": INT})
    assert not schema_accepts({"x": "1"}, {"type": "object", "additionalProperties": INT})


@pytest.mark.parametrize(("body", "closed", "expected"), [
    ('{"name": "f", "arguments": {"a": 1}}', True, [("f", {"a": 1})]),
    ('{"name": "f", "parameters": {"a": 1}}', True, [("f", {"a": 1})]),
    ('{"name": "f"}', True, [("f", {})]),
    ('{"name": "f", "arguments": "{\\"a\\": 1}"}', True, [("f", {"a": 1})]),
    ('{"name": "f", "arguments": "not json"}', True, None),
    ('{"name": "f", "arguments": [1]}', True, None),
    ('{"name": "zzz", "arguments": {}}', True, None),
    ('{"name": 3, "arguments": {}}', True, None),
    ("{'name': 'f', 'arguments': {'a': 1,},}", True, [("f", {"a": 1})]),
    ('{"name": "f", "arguments": {"a": 1}', False, [("f", {"a": 1})]),
    ('{"name": "f", "arguments": {"a": 1', False, None),  # the number may be cut off
    ('{"name": "f", "arguments": {"b": "x', False, None),
    ('{"name": "f", "arguments": {"a": }}', True, None),  # a missing value is not invented
    ('{name: f, arguments: {a: 1}}', True, None),  # bare words: too much guessing
    ('{"name": "f", "arguments": {"a": 1}}\n{"name": "g", "arguments": {}}', True,
     [("f", {"a": 1}), ("g", {})]),
    ("", True, None),
    ("just some text", True, None),
])
def test_decode_hermes(body: str, closed: bool, expected: Any) -> None:
    assert decode_call_body(body, "hermes", TOOLS, closed=closed) == expected


@pytest.mark.parametrize(("body", "closed", "expected"), [
    ("<function=f>\n<parameter=a>\n1\n</parameter>\n</function>", True, [("f", {"a": 1})]),
    ("<function=f>\n<parameter=a>\n1\n</parameter>\n", False, [("f", {"a": 1})]),  # </function> missing
    ("<function=f>\n<parameter=a>\n1\n", False, None),  # value may be cut off
    ("<function=f>\n<parameter=a>\n1\n<parameter=b>\nx\n</parameter>\n</function>", True,
     [("f", {"a": 1, "b": "x"})]),  # unclosed value ended by the next parameter
    ("<function=f>\n</function>", True, [("f", {})]),
    ("<function=f>", False, None),
    ("<function=nope>\n</function>", True, None),
    ("<function=f>\ngarbage\n</function>", True, None),
    ("<function=f>\n<parameter=a>\n1\n</parameter>\n</function>\n<function=g>\n</function>", True,
     [("f", {"a": 1}), ("g", {})]),
])
def test_decode_xml(body: str, closed: bool, expected: Any) -> None:
    assert decode_call_body(body, "xml", TOOLS, closed=closed) == expected


@pytest.mark.parametrize(("body", "expected"), [
    ('{"name": "f", "arguments": {"a": 1}}', [("f", {"a": 1})]),
    ('[{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]', [("f", {"a": 1}), ("g", {})]),
    ('{"name": "f", "arguments": {"a": 1}, "extra": 1}', None),
    ('{"name": "f", "arguments": {"b": "x"}}', None),
    ('{"name": "h", "arguments": {}}', None),
    ('[{"name": "f", "arguments": {"a": 1}}, {"name": "h", "arguments": {}}]', None),  # all or nothing
    ("{'name': 'f', 'arguments': {'a': 1}}", None),  # no repair for fences
    ("[]", None),
])
def test_decode_fenced(body: str, expected: Any) -> None:
    assert decode_fenced_body(body, TOOLS) == expected


def test_fenced_needs_tools() -> None:
    assert decode_fenced_body('{"name": "f", "arguments": {"a": 1}}', None) is None
