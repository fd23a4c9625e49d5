"""JSON shapes without a JSON Schema library: the types a schema allows, whether a value fits a
(tool parameter) schema, and where a streamed JSON value ends. Small on purpose: tool schemas use a
handful of keywords, and the parser calls these on every candidate call.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OPEN_JSON", "NOT_JSON", "json_type", "json_value_end", "schema_accepts", "schema_types"]


def schema_types(schema: Any) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    declared = schema.get("type")
    types = {declared} if isinstance(declared, str) else set(declared or [])
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            types |= schema_types(sub)
    if not types and "enum" in schema:
        types |= {json_type(v) for v in schema["enum"]}
    return types


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string"


def _type_ok(value: Any, expected: str) -> bool:
    actual = json_type(value)
    if expected == "number":
        return actual in ("integer", "number")
    if expected == "integer":
        return actual == "integer" or (actual == "number" and float(value).is_integer())
    return actual == expected


def schema_accepts(value: Any, schema: Any, _depth: int = 0) -> bool:
    """A deliberately small JSON-schema check (type, enum, const, properties, required,
    additionalProperties, items, anyOf/oneOf/allOf). Keywords it does not know pass."""
    if not isinstance(schema, dict) or _depth > 32 or "$ref" in schema:
        return True
    declared = schema.get("type")
    if declared is not None:
        names = [declared] if isinstance(declared, str) else list(declared)
        if not any(_type_ok(value, t) for t in names):
            return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "const" in schema and value != schema["const"]:
        return False
    for key in ("anyOf", "oneOf"):
        if key in schema and not any(schema_accepts(value, s, _depth + 1) for s in schema[key]):
            return False
    if "allOf" in schema and not all(schema_accepts(value, s, _depth + 1) for s in schema["allOf"]):
        return False
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        if any(k not in value for k in schema.get("required") or []):
            return False
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                if not schema_accepts(item, props[key], _depth + 1):
                    return False
            elif extra is False or (isinstance(extra, dict) and not schema_accepts(item, extra, _depth + 1)):
                return False
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return all(schema_accepts(v, schema["items"], _depth + 1) for v in value)
    return True


OPEN_JSON = -1  # the text is a JSON value that has not closed yet
NOT_JSON = -2  # the text cannot be the start of a JSON object or array


def json_value_end(text: str) -> int:
    """End offset of the JSON object/array that ``text`` starts with, or OPEN_JSON / NOT_JSON.

    Used to hold back a reply that may be a bare ``{"name": …, "arguments": …}`` call until the
    value closes, without waiting on text that can no longer be one.
    """
    pairs = {"}": "{", "]": "["}
    stack: list[str] = []
    in_str = escaped = False
    for i, ch in enumerate(text):
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            if not stack:
                return NOT_JSON
            in_str = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]":
            if not stack or stack.pop() != pairs[ch]:
                return NOT_JSON
            if not stack:
                return i + 1
        elif not stack and not ch.isspace():
            return NOT_JSON
    return OPEN_JSON
