"""The bench's workloads: deterministic prompts, sized in the model's own tokens, from a fixed seed.

Every text is drawn from one fixed word list with ``random.Random(f"{seed}:{purpose}")``, so the same
seed gives both servers byte-identical prompts, and prompts of different streams share no prefix
(apart from the chat workload's system prompt, which is shared on purpose).
Token counts are those of the message content alone; the chat template adds a few more.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from qwenhost.bench.client import Message

WORKLOADS = ("single", "streams-8", "streams-16", "chat", "interference")

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there one all we their been has would when more will if no out so said what up its "
    "about than into them can only other new some could time these two may first then do any like my now over "
    "such our man me even most made after also did many before must through back years where much your way "
    "well down should because each just those people how too little state good very make world still own see "
    "men work long get here between both life being under never day same another know while last might us "
    "great old year off come since against go came right used take three river garden window mountain letter "
    "engine market winter summer village kitchen bridge harbour forest lantern music paper stone silver "
    "morning evening question answer number system program pattern signal machine station island valley "
    "careful quiet bright heavy gentle sudden narrow distant ancient simple strange common patient honest "
    "walked carried opened listened remembered noticed followed gathered painted wondered explained built"
).split()

# Marks sentence ends; the text reads like prose, so both tokenizers and models see ordinary input.
_SENTENCE = (6, 16)


class PromptMaker:
    """Builds texts of an exact token count with the model's tokenizer (vocabulary only, no weights)."""

    def __init__(self, model_path: Path, seed: int) -> None:
        import llama_cpp

        self._llama = llama_cpp.Llama(model_path=str(model_path), vocab_only=True, verbose=False)
        self.seed = seed
        self._word_tokens: dict[str, int] = {}

    def count(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def count_output(self, text: str) -> int:
        """Tokens in generated text; special tokens a server prints as text (``<|im_end|>`` once EOS is
        ignored) count as the one token they were."""
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def rng(self, purpose: str) -> random.Random:
        return random.Random(f"{self.seed}:{purpose}")

    def _words(self, rng: random.Random, n_tokens: int) -> list[str]:
        # Qwen's pre-tokenizer splits at spaces and punctuation, so per-word counts add up (almost) exactly;
        # the text is then trimmed or padded against the real count.
        words: list[str] = []
        total, until_stop = 0, rng.randint(*_SENTENCE)
        while total < n_tokens:
            w = rng.choice(_WORDS)
            if not words or words[-1].endswith("."):
                w = w.capitalize()
            until_stop -= 1
            if until_stop == 0:
                w += "."
                until_stop = rng.randint(*_SENTENCE)
            if w not in self._word_tokens:
                self._word_tokens[w] = self.count(" " + w)
            words.append(w)
            total += self._word_tokens[w]
        return words

    def text(self, rng: random.Random, n_tokens: int) -> str:
        """Prose of exactly ``n_tokens`` tokens (a token either way in rare tokenizer corner cases)."""
        words = self._words(rng, n_tokens)
        n = self.count(" ".join(words))
        while n > n_tokens and len(words) > 1:
            words.pop()
            n = self.count(" ".join(words))
        for _ in range(64):
            if n >= n_tokens:
                break
            words.append("a")
            n = self.count(" ".join(words))
        return " ".join(words)


def scaled(n: int, scale: float, floor: int = 1) -> int:
    """``n`` multiplied by ``--scale``, never below ``floor`` (what keeps a workload meaningful)."""
    return max(floor, round(n * scale))


@dataclass(frozen=True)
class Request:
    messages: list[Message]
    max_tokens: int


def _user(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


def single(maker: PromptMaker, scale: float) -> Request:
    """One stream: a short prompt, 256 tokens out."""
    return Request(_user(maker.text(maker.rng("single"), 32)), scaled(256, scale, 8))


def streams(maker: PromptMaker, n: int, scale: float) -> list[Request]:
    """``n`` concurrent streams: prompts of 100-800 tokens, 128-256 tokens out, each drawn from the seed."""
    rng = maker.rng(f"streams-{n}")
    out = []
    for _ in range(n):
        prompt, gen = rng.randint(100, 800), rng.randint(128, 256)
        out.append(Request(_user(maker.text(rng, scaled(prompt, scale, 8))), scaled(gen, scale, 4)))
    return out


@dataclass(frozen=True)
class ChatPlan:
    """Users that share one system prompt; each sends its turns one after another."""

    system: str
    turns: list[list[str]]  # turns[user][turn]: that turn's user message
    max_tokens: int


def chat(maker: PromptMaker, scale: float, users: int = 16, turns: int = 6) -> ChatPlan:
    """16 users x 6 turns, a shared ~650-token system prompt, 30-60-token user messages, 64 tokens out."""
    rng = maker.rng("chat")
    system = "You are a helpful assistant. " + maker.text(rng, scaled(650, scale, 16))
    n_turns = scaled(turns, scale, 2)
    msgs = [[maker.text(rng, scaled(rng.randint(30, 60), scale, 4)) for _ in range(n_turns)] for _ in range(users)]
    return ChatPlan(system, msgs, scaled(64, scale, 4))


@dataclass(frozen=True)
class InterferencePlan:
    """Streams decode long outputs; once each has ``trigger_chunks`` chunks, ``long`` is sent."""

    streams: list[Request]
    long: Request
    trigger_chunks: int


def interference(maker: PromptMaker, scale: float, n_streams: int = 8) -> InterferencePlan:
    """8 streams (short prompts, 512 tokens out); after 32 tokens each, a 3,000-token prompt (16 out)."""
    rng = maker.rng("interference")
    streams_ = [Request(_user(maker.text(rng, rng.randint(20, 40))), scaled(512, scale, 48))
                for _ in range(n_streams)]
    long = Request(_user(maker.text(rng, scaled(3000, scale, 64))), 16)
    # Floors keep both ITL windows populated at small --scale: 8 tokens before the send, 40 after.
    return InterferencePlan(streams_, long, scaled(32, scale, 8))
