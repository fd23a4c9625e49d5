"""The Qwen chat protocol as pure functions: prompt rendering, output parsing, tool-call grammars.

Imports nothing from the rest of qwenhost (only the stdlib, jinja2, json_repair and
llama_cpp.llama_grammar, which is pure Python).
"""

from .events import (
    ContentDelta,
    Event,
    ParsedMessage,
    ReasoningDelta,
    ToolCall,
    ToolCallArgs,
    ToolCallStart,
    merge_events,
)
from .grammar import ToolGrammar, json_schema_grammar, tool_call_grammar, tool_schema_errors
from .parser import StreamParser, new_call_id, parse_completion
from .template import (
    RenderedPrompt,
    TemplateRenderError,
    detect_tool_format,
    render_chat,
    template_supports_thinking,
)

__all__ = [
    "ContentDelta",
    "Event",
    "ParsedMessage",
    "ReasoningDelta",
    "RenderedPrompt",
    "StreamParser",
    "TemplateRenderError",
    "ToolCall",
    "ToolCallArgs",
    "ToolCallStart",
    "ToolGrammar",
    "detect_tool_format",
    "json_schema_grammar",
    "merge_events",
    "new_call_id",
    "parse_completion",
    "render_chat",
    "template_supports_thinking",
    "tool_call_grammar",
    "tool_schema_errors",
]
