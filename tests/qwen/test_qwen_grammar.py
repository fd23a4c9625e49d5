"""Tool-call and JSON grammars: well-formed GBNF that accepts Qwen's call layouts and nothing else.

The pure checks use tests/qwen/qwen_gbnf.py (a Python GBNF parser/matcher). The native check parses
and runs every grammar in llama.cpp itself; it needs a GGUF for the vocabulary (any Qwen GGUF, a
vocab-only one is enough, e.g. llama.cpp's models/ggml-vocab-qwen2.gguf) named by QWENHOST_TEST_GGUF,
else the small test model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qwenhost.qwen.grammar import json_schema_grammar, tool_call_grammar, tool_schema_errors

from .qwen_gbnf import Grammar

HERE = Path(__file__).resolve().parent
TOOLS: dict[str, dict] = json.loads((HERE.parent / "data" / "qwen" / "tools.json").read_text())
ALL = list(TOOLS.values())

PARIS = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
HERMES_OK = [
    f"<tool_call>\n{PARIS}\n</tool_call>",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": "c", "days": 2}}\n</tool_call>',
    # JSON arguments follow the schema's property order (llama.cpp's converter, like the C++ one)
    '<tool_call>\n{"name": "search", "arguments": {"query": "q", "score": 0.5, "exact": true, "filters": {"x": 1}, '
    '"tags": ["a", "b"], "cursor": null}}\n</tool_call>',
    f"<tool_call>\n{PARIS}\n</tool_call>\n<tool_call>\n{PARIS}\n</tool_call>",
    # indented, the way Qwen2.5-Coder writes calls when nothing forces it into compact JSON
    '<tool_call>\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Lisbon",\n    "unit": "c"\n  }\n}'
    "\n</tool_call>",
]
HERMES_BAD = [
    '<tool_call>\n{"name": "launch", "arguments": {}}\n</tool_call>',  # undeclared tool
    '<tool_call>\n{"name": "get_weather", "arguments": {"unit": "c"}}\n</tool_call>',  # required missing
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": 7}}\n</tool_call>',  # wrong type
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "P", "unit": "k"}}\n</tool_call>',  # enum
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "P", "x": 1}}\n</tool_call>',  # extra key
    f"<tool_call>\n{PARIS}\n</tool_call> and some prose",  # nothing but calls after a call
    f"<tool_call>\n{PARIS}\n",  # unfinished
]
XML_OK = [
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Francisco\n</parameter>\n</function>\n</tool_call>",
    # required and optional parameters in any order; multi-line text values
    "<tool_call>\n<function=get_weather>\n<parameter=days>\n3\n</parameter>\n<parameter=city>\nNew\nYork\n"
    "</parameter>\n<parameter=unit>\nc\n</parameter>\n</function>\n</tool_call>",
    "<tool_call>\n<function=search>\n<parameter=query>\nx < y </parameter> z\n</parameter>\n<parameter=tags>\n"
    '["a"]\n</parameter>\n<parameter=cursor>\nnull\n</parameter>\n</function>\n</tool_call>',
    "<tool_call>\n<function=write_file>\n<parameter=path>\na.py\n</parameter>\n<parameter=content>\n"
    'print("<tool_call>")\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n'
    "<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>",
]
XML_BAD = [
    "<tool_call>\n<function=get_weather>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nP\n</parameter>\n<parameter=days>\nthree\n"
    "</parameter>\n</function>\n</tool_call>",
    "<tool_call>\n<function=launch>\n</function>\n</tool_call>",
    "<tool_call>\n<function=get_weather>\n<parameter=town>\nP\n</parameter>\n</function>\n</tool_call>",
]


def grammar(fmt: str, mode: str = "auto", **kw) -> tuple[Grammar, list[str], bool]:
    g = tool_call_grammar(ALL, tool_format=fmt, mode=mode, **kw)  # type: ignore[arg-type]
    assert g.root == "root"
    return Grammar(g.gbnf), g.trigger_patterns, g.lazy


@pytest.mark.parametrize("text", HERMES_OK)
def test_hermes_accepts(text: str) -> None:
    for mode in ("auto", "required"):
        assert grammar("hermes", mode)[0].matches(text)


@pytest.mark.parametrize("text", HERMES_BAD)
def test_hermes_rejects(text: str) -> None:
    assert not grammar("hermes")[0].matches(text)


@pytest.mark.parametrize("text", XML_OK)
def test_xml_accepts(text: str) -> None:
    for mode in ("auto", "required"):
        assert grammar("xml", mode)[0].matches(text)


@pytest.mark.parametrize("text", XML_BAD)
def test_xml_rejects(text: str) -> None:
    assert not grammar("xml")[0].matches(text)


def test_xml_value_cannot_contain_its_terminator() -> None:
    g = grammar("xml")[0]
    # "\n</parameter>" ends a value, so a second one right after it cannot be part of the value
    bad = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nP\n</parameter>\n</parameter>\n</function>\n"
           "</tool_call>")
    assert not g.matches(bad)


def test_lazy_auto_and_triggers() -> None:
    g, patterns, lazy = grammar("hermes")
    assert lazy and patterns[0] == "(<tool_call>)"
    fenced = '```json\n{"name": "search", "arguments": {"query": "x"}}\n```'
    for text in ("I will check.\n" + HERMES_OK[0], "Sure:\n" + fenced,
                 'Both:\n```\n[ {"name": "get_weather", "arguments": {"city": "A"}},\n'
                 '{"name": "search", "arguments": {"query": "B"}} ]\n```'):
        # llama.cpp: the first pattern that matches anywhere; the grammar is fed from group 1 on
        match = next(m for p in patterns if (m := re.search(p, text)))
        assert g.matches(text[match.start(1):]), text
    # ordinary JSON that does not name a declared tool does not trigger
    assert not any(re.search(p, '```json\n{"name": "Alice", "age": 3}\n```') for p in patterns)


def test_xml_auto_triggers_only_on_tag() -> None:
    _, patterns, lazy = grammar("xml")
    assert lazy and patterns == ["(<tool_call>)"]


def test_required_and_named() -> None:
    g, patterns, lazy = grammar("hermes", "required")
    assert not lazy and patterns == []
    assert not g.matches('```json\n{"name": "search", "arguments": {"query": "x"}}\n```')
    named, _, lazy = grammar("hermes", "auto", name="search")
    assert not lazy  # a named tool is forced from the first token
    assert named.matches('<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n</tool_call>')
    assert not named.matches(HERMES_OK[0])
    single, _, _ = grammar("xml", "required", parallel=False)
    assert single.matches(XML_OK[0])
    assert not single.matches(XML_OK[0] + "\n" + XML_OK[0])


def test_unknown_named_tool() -> None:
    with pytest.raises(ValueError):
        tool_call_grammar(ALL, tool_format="hermes", mode="required", name="nope")


def test_regex_special_names_escaped() -> None:
    tool = {"type": "function", "function": {"name": "a.b+c", "parameters": {"type": "object", "properties": {}}}}
    g = tool_call_grammar([tool], tool_format="hermes", mode="auto")
    assert r"a\.b\+c" in g.trigger_patterns[1]
    assert Grammar(g.gbnf).matches('<tool_call>\n{"name": "a.b+c", "arguments": {}}\n</tool_call>')


def test_huge_bounds_are_relaxed() -> None:
    tool = {"type": "function", "function": {"name": "w", "parameters": {
        "type": "object", "properties": {"text": {"type": "string", "maxLength": 100000}}}}}
    g = tool_call_grammar([tool], tool_format="hermes", mode="required")
    assert len(g.gbnf) < 5000
    assert Grammar(g.gbnf).matches('<tool_call>\n{"name": "w", "arguments": {"text": "hi"}}\n</tool_call>')


def test_json_schema_grammar() -> None:
    anything = Grammar(json_schema_grammar(None))
    assert anything.matches('{"a": [1, 2.5, null, "x"]}')
    assert not anything.matches("[1]")
    person = Grammar(json_schema_grammar({"type": "object", "properties": {"name": {"type": "string"}},
                                          "required": ["name"], "additionalProperties": False}))
    assert person.matches('{"name": "Ann"}')
    assert not person.matches('{"age": 3}')
    refs = {"$defs": {"n": {"type": "integer"}}, "type": "object", "properties": {"n": {"$ref": "#/$defs/n"}}}
    assert Grammar(json_schema_grammar(refs)).matches('{"n": 3}')
    with pytest.raises(ValueError):
        json_schema_grammar({"type": "file"})


@pytest.mark.parametrize(("schema", "errors"), [
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, 0),
    ({"type": "object"}, 0),
    ({}, 0),
    ({"type": "object", "properties": {}}, 0),
    ({"type": "array"}, 1),
    ({"type": "object", "properties": []}, 1),
    ({"type": "object", "properties": {"a": "string"}}, 1),
    ({"type": "object", "required": "a"}, 1),
    ({"type": "object", "properties": {"a": {"type": "file"}}}, 1),
    ({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}, 1),
    ("not a schema", 1),
])
def test_tool_schema_errors(schema: dict, errors: int) -> None:
    assert len(tool_schema_errors(schema)) == errors


GGUF = os.environ.get("QWENHOST_TEST_GGUF", "")


def test_native_llama_cpp(small_model_path: Path) -> None:
    gguf = GGUF if Path(GGUF).is_file() else str(small_model_path)
    cases, expect = [], []
    for fmt, ok, bad in (("hermes", HERMES_OK, HERMES_BAD), ("xml", XML_OK, XML_BAD)):
        for mode in ("auto", "required"):
            g = tool_call_grammar(ALL, tool_format=fmt, mode=mode)  # type: ignore[arg-type]
            spec = {"gbnf": g.gbnf, "lazy": g.lazy, "patterns": g.trigger_patterns}
            for text in ok:
                # lazy: free text first, then the grammar takes over at the trigger
                cases.append({**spec, "text": ("Let me check.\n" if g.lazy else "") + text})
                expect.append({"parsed": True, "accepted": True, "complete": True})
            for text in bad[:3]:
                cases.append({**spec, "text": text})
                expect.append({"parsed": True, "accepted": False, "complete": False})
    fenced = tool_call_grammar(ALL, tool_format="hermes", mode="auto")
    lazy = {"gbnf": fenced.gbnf, "lazy": True, "patterns": fenced.trigger_patterns}
    for text, ok in (
        ('Sure:\n```json\n{"name": "search", "arguments": {"query": "x"}}\n```', True),
        # the fence trigger fired, so arguments that do not fit the schema are refused
        ('Sure:\n```json\n{"name": "search", "arguments": {"q": 1}}\n```', False),
        # JSON naming no declared tool does not trigger: free text
        ('Sure:\n```json\n{"name": "Ann", "arguments": 3}\n```', True),
    ):
        cases.append({**lazy, "text": text})
        expect.append({"parsed": True, "accepted": ok, "complete": ok})
    cases.append({"gbnf": json_schema_grammar(None), "text": '{"a": 1}'})
    expect.append({"parsed": True, "accepted": True, "complete": True})
    # every other variant must at least compile in llama.cpp
    variants = [tool_call_grammar(ALL, tool_format=f, mode="required", name="search", parallel=p).gbnf
                for f in ("hermes", "xml") for p in (True, False)]
    variants.append(json_schema_grammar({"$defs": {"n": {"type": "integer"}}, "type": "object",
                                         "properties": {"n": {"$ref": "#/$defs/n"},
                                                        "s": {"type": "string", "maxLength": 9999}}}))
    for gbnf in variants:
        cases.append({"gbnf": gbnf, "text": None})
        expect.append({"parsed": True})
    cases.append({"gbnf": 'root ::= "a" undefined-rule', "text": None})
    expect.append({"parsed": False})
    proc = subprocess.run([sys.executable, str(HERE / "qwen_native_grammar.py"), gguf], input=json.dumps(cases),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert results == expect


def test_list_for_one_value_parameter_only_with_parallel_calls() -> None:
    listed = '<tool_call>\n{"name": "get_weather", "arguments": {"city": ["Oslo", "Paris"]}}\n</tool_call>'
    assert grammar("hermes", "required")[0].matches(listed)
    assert not grammar("hermes", "required", parallel=False)[0].matches(listed)
    nested = '<tool_call>\n{"name": "get_weather", "arguments": {"city": [["Oslo"], ["Paris"]]}}\n</tool_call>'
    assert not grammar("hermes", "required")[0].matches(nested)
