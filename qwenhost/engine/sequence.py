"""A generation request's life inside the engine: an explicit state machine plus its text bookkeeping.

WAITING --admit--> PREFILLING --prompt done--> DECODING --eog/stop/length/cancel--> FINISHED
A sequence that is preempted (KV pool full) goes back to WAITING and recomputes its tokens later.
"""

from __future__ import annotations

import codecs
import enum
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from qwenhost.engine.sampling import GrammarSpec, SamplingParams


class SeqState(enum.Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    FINISHED = "finished"


@dataclass
class GenerationRequest:
    prompt_tokens: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)
    grammar: GrammarSpec | None = None
    thinking_open: bool = False  # the rendered prompt left a <think> open
    thinking_budget: int | None = None
    ignore_eos: bool = False


@dataclass
class StepOutput:
    """What one engine step produced for one sequence."""

    text: str
    n_tokens: int
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0


THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# Qwen's documented way to end reasoning early when a budget is reached: an explicit early-stop
# sentence, then the closing tag, so the answer follows naturally.
BUDGET_CLOSE_TEXT = (
    "\n\nConsidering the limited time by the user, I have to give the solution based on the thinking "
    "directly now.\n</think>\n\n"
)

_ids = itertools.count(1)


class StopMatcher:
    """Finds stop strings in streamed text; holds back any tail that could start one (never emitted)."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buf = self.pending + text
        hit = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if hit >= 0:
            self.pending = ""
            return buf[:hit], True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        self.pending = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Sequence:
    def __init__(self, req: GenerationRequest, emit: Callable[[StepOutput], None]) -> None:
        self.id = next(_ids)
        self.req = req
        self.emit = emit
        self.state = SeqState.WAITING
        self.slot: int = -1
        self.tokens: list[int] = list(req.prompt_tokens)  # what the KV of this sequence must hold
        self.n_past = 0  # tokens of self.tokens already in the KV
        self.n_cached = 0  # prompt tokens reused from the cache at admission
        # A prefix another sequence is computing right now: wait for it and copy it instead of computing it
        # again (requests that arrive together with one system prompt compute it once).
        self.share_src = -1  # slot index
        self.share_len = 0
        self.generated: list[int] = []
        self.cancelled = False
        self.finish_reason: str | None = None
        self.sampler = None  # TokenSampler, set at admission
        self.forced: list[int] = []
        self.in_think = req.thinking_open
        self.think_tokens = 0
        self.think_closed_by_budget = False
        self._tail = ""  # recent text, to see <think>/</think> across token boundaries
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.stop = StopMatcher(req.stop)
        self.created = time.monotonic()
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.req.prompt_tokens)

    @property
    def remaining_prefill(self) -> int:
        return len(self.tokens) - self.n_past

    def text_for(self, piece: bytes) -> str:
        return self._utf8.decode(piece)

    def track_thinking(self, text: str) -> None:
        """Follow <think>/</think> in generated text so the budget counts only reasoning tokens."""
        if self.in_think:
            self.think_tokens += 1
        tail = (self._tail + text)[-16:]
        if self.in_think and THINK_CLOSE in tail:
            self.in_think = False
            tail = tail[tail.rfind(THINK_CLOSE) + len(THINK_CLOSE):]
        elif not self.in_think and not self.generated_closed_think and THINK_OPEN in tail:
            self.in_think = True
            tail = tail[tail.rfind(THINK_OPEN) + len(THINK_OPEN):]
        self._tail = tail

    @property
    def generated_closed_think(self) -> bool:
        # Once reasoning has closed, a later "<think>" is content (only one reasoning block per answer).
        return self.think_tokens > 0 and not self.in_think

    def finish_text(self) -> str:
        return self._utf8.decode(b"", final=True) + self.stop.flush()
