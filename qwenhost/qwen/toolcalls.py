"""Decode the body of one Qwen tool call (Hermes JSON, Qwen3-Coder XML, fenced JSON) into
``(name, arguments)`` pairs, with the small amount of repair that is safe.

A decoder returns ``None`` when the text is not an acceptable call; the stream parser then gives
the raw text back as content, so a bad call never takes the other calls of a message with it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import json_repair

from .fanout import fan_out
from .jsonshape import json_type, schema_accepts, schema_types

__all__ = [
    "inside_value",
    "decode_call_body",
    "decode_fenced_body",
    "coerce_xml_value",
    "tool_index",
]

Call = tuple[str, dict]


def tool_index(tools: list[dict] | None) -> dict[str, dict] | None:
    """Map tool name to its parameters schema. ``None`` when no tools were declared."""
    if not tools:
        return None
    index: dict[str, dict] = {}
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        name = fn.get("name")
        if isinstance(name, str):
            params = fn.get("parameters")
            index[name] = params if isinstance(params, dict) else {}
    return index


def _ends_inside_string(text: str) -> bool:
    # A body cut off inside a JSON string was truncated (max_tokens), not merely left unclosed;
    # json_repair would close the string and invent a plausible-looking but wrong argument.
    inside = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = inside
        elif ch == '"':
            inside = not inside
    return inside


_SCALAR_RE = re.compile(
    r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|[A-Za-z_][A-Za-z0-9_]*'
)
_WORDS = {"true": True, "True": True, "false": False, "False": False, "null": None, "None": None}


def _scalar_key(value: Any) -> tuple[str, Any]:
    if value is None or isinstance(value, bool):
        return ("lit", value)
    if isinstance(value, int | float):
        return ("num", float(value))
    return ("str", value)


def _unquote(tok: str) -> str:
    if tok[0] == '"':
        try:
            return json.loads(tok)
        except ValueError:
            return tok[1:-1]
    body = tok[1:-1].replace("\\'", "'")
    try:
        return json.loads('"' + body.replace('"', '\\"') + '"')
    except ValueError:
        return body


def _lexed_scalars(text: str) -> list[tuple[str, Any]]:
    out = []
    for tok in _SCALAR_RE.findall(text):
        if tok[0] in "\"'":
            out.append(("str", _unquote(tok)))
        elif tok in _WORDS:
            out.append(_scalar_key(_WORDS[tok]))
        elif tok[0].isdigit() or tok[0] == "-":
            out.append(("num", float(tok)))
        else:
            # A bare word: json_repair would guess it is a string; too much of a guess.
            out.append(("bare", tok))
    return out


def _tree_scalars(value: Any, out: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            out.append(("str", key))
            _tree_scalars(item, out)
    elif isinstance(value, list):
        for item in value:
            _tree_scalars(item, out)
    else:
        out.append(_scalar_key(value))
    return out


def _same_scalars(text: str, repaired: Any) -> bool:
    return sorted(map(repr, _lexed_scalars(text))) == sorted(map(repr, _tree_scalars(repaired, [])))


def inside_value(body: str) -> bool:
    """True if ``body`` (a call cut short) ends inside an argument value, where tag-like text is
    data: an open JSON string, or an XML parameter without its closing tag."""
    if body.lstrip().startswith("<function="):
        opened = body.rfind("<parameter=")
        return opened > body.rfind("</parameter>") and body.find("</function>", opened) < 0
    return _ends_inside_string(body)


def _as_call(obj: Any, tools: dict[str, dict] | None) -> Call | None:
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    if tools is not None and name not in tools:
        return None
    args = obj.get("arguments", obj.get("parameters"))
    if args is None:
        args = {}
    if isinstance(args, str):
        # Some fine-tunes double-encode: "arguments": "{\"city\": \"Paris\"}".
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return name, args


def _strict_json_values(text: str) -> list[Any] | None:
    # One or more whitespace-separated JSON values: Qwen2.5 occasionally packs two calls into a
    # single <tool_call> block.
    decoder = json.JSONDecoder()
    values: list[Any] = []
    pos, end = 0, len(text)
    while pos < end:
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return None
        values.append(value)
        while pos < end and text[pos].isspace():
            pos += 1
    return values or None


def _decode_hermes(body: str, tools: dict[str, dict] | None, closed: bool) -> list[Call] | None:
    text = body.strip()
    if not text:
        return None
    values = _strict_json_values(text)
    if values is None:
        if not closed and (_ends_inside_string(text) or text[-1] not in "}]"):
            return None  # cut off mid-value: repairing would invent an argument
        # json_repair fixes single quotes, trailing commas, Python literals and missing closing
        # brackets, but also "repairs" a missing value into "" and the like; only keep a repair
        # that changed punctuation, i.e. kept exactly the keys and values the model wrote.
        repaired = json_repair.loads(text)
        if not _same_scalars(text, repaired):
            return None
        values = repaired if isinstance(repaired, list) else [repaired]
    calls = [_as_call(v, tools) for v in values]
    if not calls or any(c is None for c in calls):
        return None
    return [each for c in calls for each in fan_out(c, tools)]  # type: ignore[arg-type]


_FUNCTION_RE = re.compile(r"<function=([^>\n]+)>")
_PARAM_RE = re.compile(r"<parameter=([^>\n]+)>")


def coerce_xml_value(raw: str, schema: Any) -> Any:
    """Type an XML parameter value by its JSON schema: null > bool > int > float > array/object >
    string (the order Ollama's qwen3coder parser uses). Untyped parameters stay strings."""
    types = schema_types(schema)
    text = raw.strip()
    if "null" in types and text == "null":
        return None
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "integer" in types and re.fullmatch(r"-?\d+", text):
        return int(text)
    if "number" in types:
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None and math.isfinite(number):
            return int(number) if re.fullmatch(r"-?\d+", text) else number
    if types & {"array", "object"} and text[:1] in ("[", "{"):
        try:
            value = json.loads(text)
        except ValueError:
            value = json_repair.loads(text)
        if json_type(value) in types:
            return value
    return raw


def _strip_one_newline(value: str) -> str:
    # The format puts the value on its own line(s); only that framing newline is markup.
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


def _decode_xml(body: str, tools: dict[str, dict] | None, closed: bool) -> list[Call] | None:
    text = body.strip()
    calls: list[Call] = []
    pos = 0
    while pos < len(text):
        fn = _FUNCTION_RE.match(text, pos)
        if not fn:
            return None
        name = fn.group(1).strip()
        if tools is not None and name not in tools:
            return None
        props = (tools or {}).get(name, {}).get("properties") or {}
        args: dict[str, Any] = {}
        pos = fn.end()
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if text.startswith("</function>", pos):
                pos += len("</function>")
                break
            if text.startswith("</parameter>", pos):
                pos += len("</parameter>")  # a duplicated closing tag (llama.cpp #24807)
                continue
            if pos >= len(text):
                if not closed and not args:
                    return None
                break  # </function> missing but every parameter closed: safe to accept
            param = _PARAM_RE.match(text, pos)
            if not param:
                return None
            key = param.group(1).strip()
            start = param.end()
            close = text.find("</parameter>", start)
            # A missing </parameter> is recognised by what follows: another declared parameter or,
            # failing that, the end of the function. Other tag-like text is part of the value.
            following = [i for k in props if (i := text.find(f"<parameter={k}>", start)) >= 0]
            nxt = min(following, default=-1)
            if close >= 0 and (nxt < 0 or close < nxt):
                value, pos = text[start:close], close + len("</parameter>")
            else:
                end = nxt if nxt >= 0 else text.find("</function>", start)
                if end < 0:
                    return None  # the value may be cut off
                value, pos = text[start:end], end
            args[key] = coerce_xml_value(_strip_one_newline(value), props.get(key))
        calls.append((name, args))
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return calls or None


def decode_call_body(body: str, tool_format: str, tools: dict[str, dict] | None,
                     *, closed: bool) -> list[Call] | None:
    """Decode the text between ``<tool_call>`` and ``</tool_call>``.

    ``closed`` is False for a call cut off by the end of the stream or by the next ``<tool_call>``.
    Both layouts are tried (declared format first): fine-tunes and quantised models mix them.
    """
    xml_first = tool_format == "xml" or body.lstrip().startswith("<function=")
    for decode in (_decode_xml, _decode_hermes) if xml_first else (_decode_hermes, _decode_xml):
        calls = decode(body, tools, closed)
        if calls:
            return calls
    return None


def decode_fenced_body(body: str, tools: dict[str, dict] | None) -> list[Call] | None:
    """Qwen2.5-Coder writes calls as a ```json block. Ordinary JSON in a reply looks the same, so
    a block counts as calls only if every object names a declared tool, has nothing but
    ``name`` and ``arguments``, and its arguments fit that tool's schema. No repair here."""
    if not tools:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    objects = value if isinstance(value, list) else [value]
    calls: list[Call] = []
    for obj in objects:
        if not isinstance(obj, dict) or set(obj) - {"name", "arguments", "parameters"}:
            return None
        call = _as_call(obj, tools)
        if call is None:
            return None
        for each in fan_out(call, tools):
            if not schema_accepts(each[1], tools[each[0]]):
                return None
            calls.append(each)
    return calls or None
