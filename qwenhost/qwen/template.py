"""Render Qwen chat templates exactly as Hugging Face ``apply_chat_template`` does.

The official Jinja template shipped with a model is the single source of truth for the prompt
layout; nothing here re-implements what a template does. We only reproduce the HF rendering
environment (sandbox, ``tojson``, ``raise_exception``, ``strftime_now``) and normalise
OpenAI-style request messages into the shapes the Qwen templates expect.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

import jinja2
import json_repair
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "RenderedPrompt",
    "TemplateRenderError",
    "detect_tool_format",
    "render_chat",
    "template_supports_thinking",
]


class TemplateRenderError(ValueError):
    """The template refused the conversation (``raise_exception``) or could not render it."""


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    # True when the prompt ends inside an opened <think> (Qwen3.5 / QwQ / R1 prefill), so the
    # model's first output token is already reasoning. The output parser's initial state must
    # come from this, never from scanning the output (peers leaked truncated thinking otherwise).
    thinking_open: bool


def _raise_exception(message: str) -> None:
    raise TemplateRenderError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's builtin tojson HTML-escapes '<', '>' and '&' and sorts keys; HF overrides it with a
    # plain json.dumps, and the Qwen tool blocks are only byte-identical with that behaviour.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _make_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = _make_env()


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    # Compiling a chat template costs milliseconds; the engine renders one per request.
    try:
        return _ENV.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateRenderError(f"chat template does not compile: {exc}") from exc


def _flatten_content(content: Any, role: str) -> str:
    if content is None:
        # Qwen templates test `'</think>' in message.content`, which fails on None; OpenAI clients
        # send null content on tool-call turns.
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and "text" in part:
                texts.append(str(part["text"]))
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise TemplateRenderError(f"unsupported content part {kind!r} in a {role} message")
        # Same joiner as llama.cpp and vLLM use for text-only templates.
        return "\n".join(texts)
    raise TemplateRenderError(f"unsupported content type {type(content).__name__} in a {role} message")


def _arguments_to_mapping(arguments: Any) -> Any:
    # OpenAI sends arguments as a JSON string; the Qwen templates iterate them (`|items`) or
    # re-serialise them (`|tojson`), so they need the mapping. Unparseable text is passed through
    # unchanged: templates that accept strings (Qwen3) still render it, others raise a 400.
    if not isinstance(arguments, str):
        return arguments
    try:
        parsed = json.loads(arguments)
    except ValueError:
        parsed = json_repair.loads(arguments)
    return parsed if isinstance(parsed, dict) else arguments


def _normalise_tool_call(call: Any) -> Any:
    if not isinstance(call, dict):
        return call
    call = dict(call)
    fn = call.get("function")
    if isinstance(fn, dict):
        fn = dict(fn)
        if "arguments" in fn:
            fn["arguments"] = _arguments_to_mapping(fn["arguments"])
        call["function"] = fn
    elif "arguments" in call:
        call["arguments"] = _arguments_to_mapping(call["arguments"])
    return call


def _normalise_messages(messages: list[dict]) -> list[dict]:
    out: list[dict] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise TemplateRenderError(f"message {i} has no role")
        msg = dict(message)
        msg["content"] = _flatten_content(msg.get("content"), msg["role"])
        calls = msg.get("tool_calls")
        if calls:
            msg["tool_calls"] = [_normalise_tool_call(c) for c in calls]
        elif "tool_calls" in msg:
            # An empty list or null must not make templates enter their tool-call branch.
            del msg["tool_calls"]
        out.append(msg)
    return out


# Markers after which a new assistant turn starts / an earlier turn ended, for the Qwen (ChatML) and
# DeepSeek-R1-distill layouts.
_ASSISTANT_MARKERS = ("<|im_start|>assistant", "<｜Assistant｜>")
_TURN_END_MARKERS = ("<|im_end|>", "<｜end▁of▁sentence｜>")


def _ends_inside_think(text: str) -> bool:
    start = max((text.rfind(m) + len(m) if m in text else -1) for m in _ASSISTANT_MARKERS)
    if start < 0:
        return False
    tail = text[start:]
    if any(m in tail for m in _TURN_END_MARKERS):
        return False
    return tail.rfind("<think>") > tail.rfind("</think>")


def render_chat(
    template: str,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    add_generation_prompt: bool = True,
    enable_thinking: bool | None = None,
    bos_token: str = "",
    eos_token: str = "",
    extra: dict | None = None,
) -> RenderedPrompt:
    """Render ``messages`` with the model's own chat template.

    ``enable_thinking=None`` leaves the variable undefined so the template default applies.
    ``extra`` carries further template variables (``chat_template_kwargs``); the named arguments
    win over it. Raises TemplateRenderError (a ValueError) for anything the template rejects.
    """
    if not messages:
        raise TemplateRenderError("no messages")
    context: dict[str, Any] = dict(extra or {})
    context.update(
        messages=_normalise_messages(messages),
        tools=tools or None,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )
    if enable_thinking is not None:
        context["enable_thinking"] = enable_thinking
    compiled = _compile(template)
    try:
        text = compiled.render(**context)
    except TemplateRenderError:
        raise
    except jinja2.TemplateError as exc:
        raise TemplateRenderError(f"chat template failed: {exc}") from exc
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        # Malformed messages surface as Python errors inside the template (e.g. `in` on a
        # non-string); they are the client's fault, not ours.
        raise TemplateRenderError(f"chat template failed: {type(exc).__name__}: {exc}") from exc
    return RenderedPrompt(text=text, thinking_open=_ends_inside_think(text))


def detect_tool_format(template: str) -> Literal["hermes", "xml"]:
    """``xml`` for the Qwen3-Coder / Qwen3.5 ``<function=NAME><parameter=K>`` layout."""
    return "xml" if "<function=" in template else "hermes"


def template_supports_thinking(template: str) -> bool:
    # Same heuristic as llama.cpp's Qwen3-Coder/3.5 handler: a template that mentions <think>
    # either prefills it or strips it from history, i.e. the model is trained to reason.
    return "<think>" in template
