"""Events emitted by the Qwen output parser and the message they merge into."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ContentDelta",
    "Event",
    "ParsedMessage",
    "ReasoningDelta",
    "ToolCall",
    "ToolCallArgs",
    "ToolCallStart",
    "merge_events",
]


@dataclass
class ReasoningDelta:
    text: str


@dataclass
class ContentDelta:
    text: str


@dataclass
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass
class ToolCallArgs:
    index: int
    fragment: str  # concatenated fragments of one index = the arguments JSON object string


Event = ReasoningDelta | ContentDelta | ToolCallStart | ToolCallArgs


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON object string


@dataclass
class ParsedMessage:
    reasoning: str | None
    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)


def merge_events(events: list[Event]) -> ParsedMessage:
    """Fold a stream's events into one message (what a non-streaming response returns)."""
    reasoning: list[str] = []
    content: list[str] = []
    calls: dict[int, ToolCall] = {}
    for ev in events:
        if isinstance(ev, ReasoningDelta):
            reasoning.append(ev.text)
        elif isinstance(ev, ContentDelta):
            content.append(ev.text)
        elif isinstance(ev, ToolCallStart):
            calls[ev.index] = ToolCall(ev.id, ev.name, "")
        else:
            calls[ev.index].arguments += ev.fragment
    return ParsedMessage(
        reasoning="".join(reasoning) or None,
        content="".join(content) or None,
        tool_calls=[calls[i] for i in sorted(calls)],
    )
