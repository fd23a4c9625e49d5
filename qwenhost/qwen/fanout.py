"""One call with a list where the tool takes one value means that call once per item.

Asked for the weather in Oslo and Paris, Qwen2.5-Coder writes ``get_weather(city=["Oslo", "Paris"])``
far more often than two calls, though ``city`` is declared a string. The schema leaves one reading:
a call per item. Lists of equal length in several such parameters are zipped; anything else is left
for schema validation to judge.
"""

from __future__ import annotations

import copy
from typing import Any

Call = tuple[str, dict[str, Any]]

_SCALARS = {"string", "integer", "number", "boolean"}
# How many calls one list may fan out into (and the grammar's bound on such lists).
MAX_FANOUT = 16


def _scalar_param(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    t = schema.get("type")
    types = {t} if isinstance(t, str) else set(t or [])
    return bool(types) and types <= _SCALARS


def fan_out(call: Call, tools: dict[str, dict] | None) -> list[Call]:
    name, args = call
    props = ((tools or {}).get(name) or {}).get("properties") or {}
    listed = {k: v for k, v in args.items()
              if isinstance(v, list) and _scalar_param(props.get(k))
              and all(not isinstance(i, (list, dict)) for i in v)}
    sizes = {len(v) for v in listed.values()}
    if not listed or len(sizes) != 1 or not 2 <= sizes.pop() <= MAX_FANOUT:
        return [call]
    n = len(next(iter(listed.values())))
    return [(name, {k: (listed[k][i] if k in listed else v) for k, v in args.items()}) for i in range(n)]


def listable_parameters(params: dict) -> dict:
    """The tool's parameter schema, where each one-value parameter may also be a list of such values
    (2..MAX_FANOUT items), so a grammar lets the model write the list form that fan_out expands."""
    out = copy.deepcopy(params)
    props = out.get("properties")
    if isinstance(props, dict):
        for key, schema in props.items():
            if _scalar_param(schema):
                props[key] = {"anyOf": [schema, {"type": "array", "items": copy.deepcopy(schema),
                                                 "minItems": 2, "maxItems": MAX_FANOUT}]}
    return out
