"""Incremental parser for Qwen model output: reasoning, content and tool calls.

Style follows Ollama's Qwen parsers: an explicit state, a text buffer, and a hold-back of any
suffix that could still become a tag, so ``<``, ``<tool_ca`` or ``</thi`` never reach the client.
``feed`` and ``finish`` return typed events; feeding the same text in any chunking yields the same
merged message (tested at every split point).

Decisions that peers make differently:

* The initial state comes only from ``thinking_open`` (how the prompt was rendered). A stream that
  ends inside ``<think>`` stays reasoning; it never leaks into content (vLLM #35230).
* A ``<tool_call>`` inside ``<think>`` is reasoning, not a call. Ollama and llama.cpp end thinking
  at ``<tool_call>`` (ollama#14477, llama.cpp qwen3-coder ``thinking_end_tags``); PrimeIntellect's
  renderers only parse calls after ``</think>`` because drafts inside thinking produced phantom
  duplicate calls (PrimeIntellect-ai/renderers#80), and LM Studio reported false positives from
  prose inside thinking (lmstudio-bug-tracker#1592). We side with the latter: a call the model only
  drafted while thinking is not executed.
* Arguments are emitted once the call is complete (one ``ToolCallArgs`` fragment per call), never
  streamed piecewise: a call that turns out malformed falls back to content as raw text, and text
  already sent as arguments could not be taken back.
* Qwen2.5-Coder's fenced ```json calls, and replies that are nothing but a call's JSON, are accepted
  only if they name a declared tool and fit its schema; while such text might still be a call it is
  held back, and released verbatim if not (the states for those forms live in untagged.py).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

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
from .toolcalls import (
    decode_call_body,
    inside_value,
    tool_index,
)
from .untagged import FENCE, UntaggedCallStates, fence_at, fence_hold
from .untagged import ParserState as _State

__all__ = [
    "ContentDelta",
    "Event",
    "ParsedMessage",
    "ReasoningDelta",
    "StreamParser",
    "ToolCall",
    "ToolCallArgs",
    "ToolCallStart",
    "merge_events",
    "new_call_id",
    "parse_completion",
]


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"



def _held_suffix(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``tags``."""
    for size in range(min(len(text), max(map(len, tags), default=1) - 1), 0, -1):
        tail = text[-size:]
        if any(tag.startswith(tail) for tag in tags):
            return size
    return 0


class StreamParser(UntaggedCallStates):
    def __init__(
        self,
        *,
        tools: list[dict] | None,
        thinking_open: bool,
        tool_format: str = "hermes",
        parse_tool_calls: bool = True,
        id_factory: Callable[[], str] | None = None,
    ) -> None:
        self._tools = tool_index(tools)
        self._format = tool_format
        self._calls_on = parse_tool_calls
        # Fenced calls are a Qwen2.5-Coder (Hermes template) habit; without tools they can't match.
        self._fences_on = parse_tool_calls and tool_format == "hermes" and bool(self._tools)
        self._thinking_open = thinking_open
        self._new_id = id_factory or new_call_id
        self._state = _State.START
        self._buf = ""
        self._ws = ""  # trailing whitespace of the current run, held until we know what follows
        self._eat_ws = False
        self._line_start = True  # the next content character starts a line (fences only count there)
        self._held = ""  # text of a call or fence being collected
        self._pre_ws = ""  # whitespace before that call/fence, restored if it is not a call
        self._deferred = -1  # offset in _held of a </tool_call> that looked like argument data
        self._bare_ok = self._fences_on  # no content yet: a leading JSON value may be a bare call
        self._count = 0
        self._out: list[Event] = []

    @property
    def tool_call_count(self) -> int:
        return self._count

    def feed(self, text: str) -> list[Event]:
        self._buf += text
        while self._step(final=False):
            pass
        return self._take()

    def finish(self) -> list[Event]:
        """End of stream: flush held text, and accept an unclosed final call if it is complete."""
        while True:
            while self._step(final=True):
                pass
            if self._state is _State.TOOL:
                body, self._held, self._buf = self._held + self._buf, "", ""
                self._conclude(body, closed=False, rest="")
                if self._buf:
                    continue  # text after a split call goes round again
            elif self._state is _State.BARE:
                self._bare_ok = False
                self._state, self._buf, self._held = _State.CONTENT, self._held + self._buf, ""
                continue
            elif self._state is _State.FENCE_BODY:
                held, self._held = self._held + self._buf, ""
                self._buf = ""
                self._end_fence(held)
            break
        if self._state is not _State.THINK and self._ws and self._count == 0:
            # Trailing whitespace of a plain answer is the model's; after calls it is just layout.
            self._out.append(ContentDelta(self._ws))
        self._ws = ""
        return self._take()

    # -- emitters ---------------------------------------------------------------------------

    def _take(self) -> list[Event]:
        out, self._out = self._out, []
        return out

    def _run(self, text: str, cls: type[ReasoningDelta] | type[ContentDelta], close: bool) -> None:
        text = self._ws + text
        kept = text.rstrip()
        self._ws = "" if close else text[len(kept):]
        if kept:
            self._out.append(cls(kept))

    def _reason(self, text: str, close: bool = False) -> None:
        self._run(text, ReasoningDelta, close)

    def _content(self, text: str) -> None:
        if text:
            self._bare_ok = self._bare_ok and not text.strip()
            self._line_start = text.endswith("\n")
            self._run(text, ContentDelta, close=False)

    def _emit_calls(self, calls: list[tuple[str, dict]]) -> None:
        self._pre_ws = ""
        for name, args in calls:
            self._out.append(ToolCallStart(self._count, self._new_id(), name))
            self._out.append(ToolCallArgs(self._count, json.dumps(args, ensure_ascii=False)))
            self._count += 1

    def _release(self, raw: str) -> None:
        # Not a call after all: give the text back exactly as the model wrote it.
        self._ws, self._pre_ws = self._pre_ws, ""
        self._content(raw)

    def _end_call(self, body: str, *, closed: bool) -> None:
        calls = decode_call_body(body, self._format, self._tools, closed=closed)
        if calls:
            self._emit_calls(calls)
        else:
            self._release(CALL_OPEN + body + (CALL_CLOSE if closed else ""))

    # -- state machine ------------------------------------------------------------------------

    def _step(self, final: bool) -> bool:
        """Consume what the current state can decide on; False when it must wait for more text."""
        if self._eat_ws and self._state in (_State.THINK, _State.CONTENT):
            stripped = self._buf.lstrip()
            if not stripped and not final:
                self._buf = ""
                return False
            self._buf, self._eat_ws = stripped, False
        if not self._buf:
            return False
        return {
            _State.START: self._start,
            _State.THINK: self._think,
            _State.CONTENT: self._scan_content,
            _State.TOOL: self._tool,
            _State.FENCE_HEAD: self._fence_head,
            _State.FENCE_BODY: self._fence_body,
            _State.CODE: self._code,
            _State.BARE: self._bare,
        }[self._state](final)

    def _start(self, final: bool) -> bool:
        lead = self._buf.lstrip()
        if lead.startswith(THINK_OPEN):
            # Opens reasoning, or repeats the <think> the prompt already opened: strip one.
            self._buf = lead[len(THINK_OPEN):]
            self._state, self._eat_ws = _State.THINK, True
            return True
        if not final and THINK_OPEN.startswith(lead):
            return False
        self._state = _State.THINK if self._thinking_open else _State.CONTENT
        self._eat_ws = self._thinking_open
        return True

    def _think(self, final: bool) -> bool:
        end = self._buf.find(THINK_CLOSE)
        if end >= 0:
            self._reason(self._buf[:end], close=True)
            self._buf = self._buf[end + len(THINK_CLOSE):]
            self._state, self._eat_ws, self._line_start = _State.CONTENT, True, True
            return True
        return self._pass_through(final, (THINK_CLOSE,), self._reason)

    def _pass_through(self, final: bool, tags: tuple[str, ...], emit: Callable[[str], None]) -> bool:
        keep = 0 if final else _held_suffix(self._buf, tags)
        if keep == len(self._buf):
            return False
        emit(self._buf[: len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep:]
        return True

    def _scan_content(self, final: bool) -> bool:
        buf = self._buf
        if self._bare_ok and buf.lstrip()[:1] in ("{", "["):
            self._pre_ws, self._ws = self._ws + buf[: len(buf) - len(buf.lstrip())], ""
            self._buf, self._held, self._state = buf.lstrip(), "", _State.BARE
            return True
        # Think tags are markup only at the start of the output (and as the end of reasoning);
        # later in the content they are text the model wrote, e.g. `<think>` in an explanation.
        tags = (CALL_OPEN,) if self._calls_on else ()
        hits = [(i, tag) for tag in tags if (i := buf.find(tag)) >= 0]
        if self._fences_on and (i := fence_at(buf, self._line_start)) >= 0:
            hits.append((i, FENCE))
        if not hits:
            keep = 0
            if not final:
                keep = _held_suffix(buf, tags)
                if self._fences_on:
                    keep = max(keep, fence_hold(buf, self._line_start))
            if keep == len(buf):
                return False
            self._content(buf[: len(buf) - keep])
            self._buf = buf[len(buf) - keep:]
            return True
        pos, tag = min(hits)
        self._content(buf[:pos])
        self._buf = buf[pos + len(tag):]
        self._pre_ws, self._ws = self._ws, ""
        self._held = ""
        self._state = _State.TOOL if tag == CALL_OPEN else _State.FENCE_HEAD
        return True

    def _tool(self, final: bool) -> bool:
        buf = self._buf
        close, reopen = buf.find(CALL_CLOSE), buf.find(CALL_OPEN)
        end = close if close >= 0 and (reopen < 0 or close < reopen) else reopen
        if end < 0:
            keep = 0 if final else _held_suffix(buf, (CALL_CLOSE, CALL_OPEN))
            if keep == len(buf):
                return False
            self._held += buf[: len(buf) - keep]
            self._buf = buf[len(buf) - keep:]
            return True
        tag = CALL_CLOSE if end == close else CALL_OPEN
        body = self._held + buf[:end]
        if inside_value(body):
            # The tag is data inside an argument (code that mentions it): keep collecting, but
            # remember where a closing tag was in case the call never becomes valid.
            if tag == CALL_CLOSE and self._deferred < 0:
                self._deferred = len(body)
            self._held = body + tag
            self._buf = buf[end + len(tag):]
            return True
        # A <tool_call> before this call closed starts the next call: decide on this one and move
        # on, so one broken call cannot swallow the rest of the message.
        closed = tag == CALL_CLOSE
        self._conclude(body, closed=closed, rest=buf[end + len(tag) if closed else end:])
        return True

    def _conclude(self, body: str, *, closed: bool, rest: str) -> None:
        calls = decode_call_body(body, self._format, self._tools, closed=closed)
        if calls:
            self._emit_calls(calls)
            self._buf = rest
        elif self._deferred < 0:
            self._release(CALL_OPEN + body + (CALL_CLOSE if closed else ""))
            self._buf = rest
        else:
            # Not valid as a whole: the first closing tag we took for data really closed the call.
            cut = self._deferred
            self._end_call(body[:cut], closed=True)
            self._buf = body[cut + len(CALL_CLOSE):] + (CALL_CLOSE if closed else "") + rest
        self._deferred = -1
        self._held = ""
        self._state, self._eat_ws, self._line_start = _State.CONTENT, True, True



def parse_completion(
    text: str,
    *,
    tools: list[dict] | None,
    thinking_open: bool,
    tool_format: str = "hermes",
    parse_tool_calls: bool = True,
    id_factory: Callable[[], str] | None = None,
) -> ParsedMessage:
    parser = StreamParser(tools=tools, thinking_open=thinking_open, tool_format=tool_format,
                          parse_tool_calls=parse_tool_calls, id_factory=id_factory)
    return merge_events(parser.feed(text) + parser.finish())
