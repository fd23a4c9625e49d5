"""GBNF grammars that constrain Qwen tool calls and JSON output under llama.cpp.

JSON-schema translation is delegated to ``llama_cpp.llama_grammar.SchemaConverter`` (pure Python);
this module only adds the Qwen call framing around it.

The engine must only feed a tool grammar after ``</think>`` when the prompt left thinking open:
the parser treats ``<tool_call>`` inside thinking as reasoning, and a lazy trigger firing there
would force a call the parser then ignores. Never accept EOG or a rejected token into an
incomplete grammar: llama.cpp aborts the process. For the same reason prefer a trigger *token* for
``<tool_call>`` (a single special token in Qwen vocabularies) over the pattern: a pattern match
replays the rest of the completing token into the grammar, unchecked.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from llama_cpp.llama_grammar import SchemaConverter

from .fanout import listable_parameters

__all__ = [
    "CALL_TAG",
    "ToolGrammar",
    "json_schema_grammar",
    "tag_trigger_pattern",
    "tool_call_grammar",
    "tool_schema_errors",
]

CALL_TAG = "<tool_call>"


@dataclass(frozen=True)
class ToolGrammar:
    gbnf: str
    root: str
    lazy: bool  # True: only active after one of trigger_patterns matched
    # llama.cpp lazy-grammar regexes (std::regex ECMAScript, regex_search over all text generated so
    # far); the grammar is fed from the first capture group on.
    trigger_patterns: list[str] = field(default_factory=list)


# Whitespace the model may put between framing tokens. Bounded so a constrained model cannot run
# away in newlines; the fence trigger below uses the same class and bound, because every text a
# trigger matches is replayed into the grammar and must be accepted by it.
_WS = r"[ \t\n]{0,4}"
_JSON_SPACE = r'| " " | "\n"{1,2} [ \t]{0,20}'
# Repetition bounds above this are dropped from schemas: the Python converter expands them
# textually into huge nested rules (and llama.cpp refuses repetitions over 2000).
_MAX_BOUND = 256
# Required XML parameters are accepted in any order up to this many (n! alternatives).
_MAX_PERMUTED = 4
_XML_VALUE_END = "\n</parameter>"
NL = "\n"


def _lit(text: str) -> str:
    """A GBNF string literal."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _char_class(chars: set[str], negate: bool = False) -> str:
    escapes = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "-": "\\-", "]": "\\]", "[": "\\[", "\\": "\\\\"}
    # '^' has no escape in GBNF; it is only special first in the class, so put it last.
    ordered = sorted(chars, key=lambda c: (c == "^", c))
    return ("[^" if negate else "[") + "".join(escapes.get(c, c) for c in ordered) + "]"


def _regex_escape(text: str) -> str:
    # Same character set as llama.cpp's regex_escape (common/common.cpp).
    return re.sub(r"([.^$|()*+?\[\]{}\\/])", r"\\\1", text)


def _relax(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key in ("minLength", "maxLength", "minItems", "maxItems") and isinstance(value, int) \
                    and value > _MAX_BOUND:
                continue
            out[key] = _relax(value)
        return out
    if isinstance(schema, list):
        return [_relax(v) for v in schema]
    return schema


class _Converter(SchemaConverter):
    """llama-cpp-python's port drops the trailing ``space`` after enum/const values (llama.cpp's own
    converter keeps it), so ``"unit": "c"`` could not be followed by a newline before ``}``."""

    def _generate_constant_rule(self, value: Any) -> str:
        return f"{self._format_literal(json.dumps(value))} space"


class _Builder:
    """One SchemaConverter shared by all tools, so common rules (string, value, ...) are emitted
    once and our own rules go through its name de-duplication."""

    def __init__(self) -> None:
        self.conv = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        # The Python converter allows one optional space between JSON tokens, which forces compact
        # JSON; Qwen2.5-Coder writes indented calls, and forcing it out of that layout changed the
        # argument values it chose (measured in bench/tool_accuracy.py). Same bound as llama.cpp's
        # C++ converter: a space, or up to two newlines and 20 indentation characters.
        self.conv._rules["space"] = _JSON_SPACE
        self._n = 0

    def rule(self, name: str, body: str) -> str:
        return self.conv._add_rule(name, body)

    def schema(self, schema: dict | None, name: str) -> str:
        schema = _relax(copy.deepcopy(schema)) if schema else {"type": "object"}
        self._n += 1
        schema = self.conv.resolve_refs(schema, f"schema{self._n}")
        return self.conv.visit(schema, name)

    def excluding(self, name: str, stop: str) -> str:
        """Rule for any text that does not contain ``stop``: the complement of its KMP automaton,
        one rule per state (the construction llama.cpp uses for its own ``until`` rules)."""
        fail = [0] * len(stop)
        k = 0
        for i in range(1, len(stop)):
            while k and stop[i] != stop[k]:
                k = fail[k - 1]
            if stop[i] == stop[k]:
                k += 1
            fail[i] = k

        def step(state: int, ch: str) -> int:
            while state and stop[state] != ch:
                state = fail[state - 1]
            return state + 1 if stop[state] == ch else 0

        names = [f"{name}-{s}" if s else name for s in range(len(stop))]
        alphabet = set(stop)
        for state in range(len(stop)):
            moves: dict[int, set[str]] = {}
            for ch in alphabet:
                moves.setdefault(step(state, ch), set()).add(ch)
            # Every state accepts; a character that would complete ``stop`` gets no alternative.
            alts = ['""'] + [f"{_char_class(chars)} {names[dest]}"
                             for dest, chars in sorted(moves.items()) if dest < len(stop)]
            alts.append(f"{_char_class(alphabet, negate=True)} {names[0]}")
            self.conv._rules[names[state]] = " | ".join(alts)
        return names[0]

    def grammar(self, root: str) -> str:
        self.conv._rules["root"] = root
        return self.conv.format_grammar() + "\n"


def _tools_by_name(tools: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for tool in tools:
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        if isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            out[fn["name"]] = params if isinstance(params, dict) else {}
    return out


def _hermes_object(b: _Builder, name: str, params: dict) -> str:
    args = b.schema(params, f"{name}-args")
    body = " ".join([
        '"{"', "ws", _lit('"name"'), "ws", '":"', "ws", _lit(json.dumps(name, ensure_ascii=False)),
        "ws", '","', "ws", _lit('"arguments"'), "ws", '":"', "ws", args, "ws", '"}"',
    ])
    return b.rule(f"{name}-call", body)


def _xml_value(b: _Builder, tool: str, key: str, schema: Any) -> str:
    types = schema.get("type") if isinstance(schema, dict) else None
    type_set = {types} if isinstance(types, str) else set(types or [])
    if not type_set or "string" in type_set:
        # Raw text; a string alternative accepts anything, as in llama.cpp's qwen3-coder grammar.
        return b.excluding("xml-text", _XML_VALUE_END)
    return b.schema(schema, f"{tool}-{key}-value")


def _xml_function(b: _Builder, name: str, params: dict) -> str:
    props = params.get("properties") if isinstance(params.get("properties"), dict) else {}
    required = [k for k in params.get("required") or [] if k in props]
    param_rules = {}
    for key, schema in props.items():
        value = _xml_value(b, name, key, schema)
        param_rules[key] = b.rule(
            f"{name}-{key}-param", f"{_lit(f'<parameter={key}>' + NL)} {value} {_lit(_XML_VALUE_END + NL)}"
        )
    optional = [param_rules[k] for k in props if k not in required]
    opt = b.rule(f"{name}-optional", " | ".join(optional)) + "*" if optional else ""
    # Qwen does not always keep the declared order, so required parameters may come in any order
    # (as in llama.cpp's grammar), with optional ones anywhere between them.
    orders = itertools.permutations(required) if len(required) <= _MAX_PERMUTED else [tuple(required)]
    seqs = [" ".join(p for k in order for p in (param_rules[k], opt) if p) for order in orders]
    seqs = [f"{opt} {s}".strip() for s in seqs]
    args = " | ".join(f"({s})" for s in seqs if s)
    body = _lit(f"<function={name}>" + NL) + (f" ({args})" if args else "") + " " + _lit("</function>" + NL)
    return b.rule(f"{name}-function", body)


def tag_trigger_pattern(tag: str) -> str:
    """The lazy-trigger regex for a call tag. An engine whose vocabulary has the tag as one token
    should trigger on that token id instead (cheaper, and no partial-token replay into the grammar)."""
    return f"({_regex_escape(tag)})"


def tool_call_grammar(
    tools: list[dict],
    *,
    tool_format: str,
    mode: Literal["auto", "required"],
    name: str | None = None,
    parallel: bool = True,
) -> ToolGrammar:
    """Grammar for the calls of one request.

    ``auto``: lazy; once the model opens a call (``<tool_call>``, or for the Hermes format a
    ```json fence naming a declared tool) the rest is constrained: a declared tool, arguments that
    fit its schema, the closing tag or fence, then more calls or the end. ``required`` (or a
    ``name``): active from the first token and forces ``<tool_call>`` blocks of the allowed tools.
    """
    declared = _tools_by_name(tools)
    if name is not None:
        if name not in declared:
            raise ValueError(f"tool {name!r} is not declared")
        declared = {name: declared[name]}
    if not declared:
        raise ValueError("no tools to constrain")
    if parallel and tool_format != "xml":
        # Allow the list form of a one-value parameter; the parser fans it out into one call per item.
        declared = {n: listable_parameters(p) for n, p in declared.items()}
    b = _Builder()
    b.rule("ws", _WS)
    one = _xml_function if tool_format == "xml" else _hermes_object
    call_body = b.rule("call-body", " | ".join(one(b, n, p) for n, p in declared.items()))
    call = b.rule("tool-call", f'{_lit("<tool_call>")} ws {call_body} ws {_lit("</tool_call>")}')
    patterns = [tag_trigger_pattern(CALL_TAG)]
    lazy = mode == "auto" and name is None
    if lazy and tool_format != "xml":
        # Qwen2.5-Coder's fenced form; only a fence naming a declared tool and going on to more
        # keys triggers, so ordinary JSON in a reply stays free. llama.cpp replays the rest of the
        # token that completed the match into the grammar (and aborts if it is refused), so the
        # match ends where the grammar is most permissive: after the comma.
        names = "|".join(_regex_escape(json.dumps(n, ensure_ascii=False)[1:-1]) for n in declared)
        patterns.append(rf'(```(?:json)?{_WS}(?:\[{_WS})?\{{{_WS}"name"{_WS}:{_WS}"(?:{names})"{_WS},)')
        listed = b.rule("call-list", f'"[" ws {call_body} (ws "," ws {call_body})* ws "]"')
        fenced = b.rule("fenced-call", f'"```" "json"? ws ({listed} | {call_body}) ws "```"')
        call = b.rule("any-call", f"{call} | {fenced}")
    root = f"{call} (ws {call})* ws" if parallel else f"{call} ws"
    return ToolGrammar(gbnf=b.grammar(root), root="root", lazy=lazy,
                       trigger_patterns=patterns if lazy else [])


def json_schema_grammar(schema: dict | None) -> str:
    """GBNF (root rule ``root``) for one JSON value of ``schema``; ``None`` means any object."""
    b = _Builder()
    try:
        top = b.schema(schema, "json")
    except (AssertionError, KeyError, ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"unsupported JSON schema: {exc}") from exc
    return b.grammar(top)


def tool_schema_errors(schema: dict) -> list[str]:
    """Problems that make a declared tool's ``parameters`` schema unusable (for 400 responses)."""
    if not isinstance(schema, dict):
        return ["parameters must be a JSON Schema object"]
    errors = []
    if schema.get("type", "object") != "object":
        errors.append(f"parameters must have type 'object', not {schema.get('type')!r}")
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        errors.append("parameters.properties must be an object")
    else:
        errors += [f"parameters.properties.{k} must be a schema object"
                   for k, v in props.items() if not isinstance(v, dict)]
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
        errors.append("parameters.required must be a list of property names")
    if not errors:
        try:
            _Builder().schema(schema, "args")
        except (AssertionError, KeyError, ValueError, TypeError, RecursionError) as exc:
            errors.append(f"parameters schema is not supported: {exc}")
    return errors
