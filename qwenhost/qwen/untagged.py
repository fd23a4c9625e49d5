"""Qwen2.5-Coder's untagged call forms — a fenced ```json block, or a reply that is nothing but the
call's JSON — as states of StreamParser, kept apart from the tag-based protocol in parser.py.

While such text might still be a call it is held back; it becomes calls only if every object names a
declared tool and fits its schema (decode_fenced_body), and is released verbatim otherwise.
"""

from __future__ import annotations

from enum import Enum, auto

from .jsonshape import OPEN_JSON, json_value_end
from .toolcalls import decode_fenced_body

FENCE = "```"
# A fence header longer than this is not "```json"; it is inline code or prose.
_MAX_FENCE_HEADER = 40
# A bare JSON call longer than this is not waited for: it is released as content.
_MAX_BARE_CALL = 16384


class ParserState(Enum):
    START = auto()  # before the first output: a leading <think> may open (or repeat) reasoning
    THINK = auto()
    CONTENT = auto()
    TOOL = auto()  # inside <tool_call>, collecting the body
    FENCE_HEAD = auto()  # after ``` at a line start, waiting for the language line
    FENCE_BODY = auto()  # inside ```json that may be a Qwen2.5-Coder call
    CODE = auto()  # inside a code block that is not a call: plain content until the closing fence
    BARE = auto()  # a reply that starts with { or [: maybe a bare Qwen2.5-Coder call, held until it closes


def fence_at(text: str, at_line_start: bool) -> int:
    """Index of the first ``` that starts a line in ``text``, or -1."""
    pos = text.find(FENCE)
    while pos >= 0:
        if (pos == 0 and at_line_start) or (pos > 0 and text[pos - 1] == "\n"):
            return pos
        pos = text.find(FENCE, pos + 1)
    return -1


def fence_hold(text: str, at_line_start: bool) -> int:
    """How many trailing backticks to hold: a "`" or "``" at a line start may still grow into a fence."""
    for size in (2, 1):
        if len(text) >= size and text.endswith("`" * size):
            start = len(text) - size
            if (start == 0 and at_line_start) or (start > 0 and text[start - 1] == "\n"):
                return size
    return 0


class UntaggedCallStates:
    """Mixin for StreamParser: the FENCE_HEAD, FENCE_BODY, CODE and BARE states. It works on the parser's
    buffers (_buf, _held, _ws, _pre_ws) and emitters (_content, _emit_calls, _release)."""

    _buf: str
    _held: str
    _ws: str
    _pre_ws: str
    _state: ParserState
    _eat_ws: bool
    _line_start: bool
    _bare_ok: bool
    _tools: dict[str, dict] | None

    def _end_fence(self, held: str, close: str = "") -> bool:
        _header, _, body = held.partition("\n")
        calls = decode_fenced_body(body, self._tools)
        if calls:
            self._emit_calls(calls)
        else:
            self._release(held + close)
        return bool(calls)


    def _fence_head(self, final: bool) -> bool:
        buf = self._buf
        end = buf.find("\n")
        if 0 <= end <= _MAX_FENCE_HEADER:
            lang = buf[:end].strip().lower()
            self._buf = buf[end + 1:]
            if lang in ("", "json"):
                self._held = FENCE + buf[: end + 1]
                self._state = ParserState.FENCE_BODY
            else:
                self._release(FENCE + buf[: end + 1])
                self._state = ParserState.CODE
            return True
        if end < 0 and len(buf) <= _MAX_FENCE_HEADER and not final:
            return False
        # No language line: inline backticks, not a code block.
        self._release(FENCE)
        self._state = ParserState.CONTENT
        return True

    def _fence_body(self, final: bool) -> bool:
        buf = self._buf
        body_so_far = (self._held.partition("\n")[2] + buf).lstrip()
        if body_so_far and body_so_far[0] not in "{[":
            # Code, not a call object: show the block as it streams.
            self._release(self._held)
            self._held = ""
            self._state = ParserState.CODE
            return True
        close = fence_at(buf, self._held.endswith("\n"))
        if close >= 0:
            if self._end_fence(self._held + buf[:close], FENCE):
                self._eat_ws = self._line_start = True
            self._buf = buf[close + len(FENCE):]
            self._held = ""
            self._state = ParserState.CONTENT
            return True
        keep = 0 if final else fence_hold(buf, self._held.endswith("\n"))
        if keep == len(buf):
            return False
        self._held += buf[: len(buf) - keep]
        self._buf = buf[len(buf) - keep:]
        return True

    def _bare(self, final: bool) -> bool:
        """Qwen2.5-Coder sometimes answers with nothing but the call's JSON, untagged and unfenced."""
        self._held, self._buf = self._held + self._buf, ""
        end = json_value_end(self._held)
        if end == OPEN_JSON and not final and len(self._held) <= _MAX_BARE_CALL:
            return False
        calls = decode_fenced_body(self._held[:end], self._tools) if end >= 0 else None
        if calls:
            self._emit_calls(calls)
            self._buf = self._held[end:]
        else:
            self._bare_ok = False
            self._ws, self._pre_ws = self._pre_ws, ""
            self._buf = self._held
        self._held, self._state = "", ParserState.CONTENT
        return True

    def _code(self, final: bool) -> bool:
        buf = self._buf
        close = fence_at(buf, self._line_start)
        if close >= 0:
            self._content(buf[: close + len(FENCE)])
            self._buf = buf[close + len(FENCE):]
            self._state = ParserState.CONTENT
            return True
        keep = 0 if final else fence_hold(buf, self._line_start)
        if keep == len(buf):
            return False
        self._content(buf[: len(buf) - keep])
        self._buf = buf[len(buf) - keep:]
        return True
