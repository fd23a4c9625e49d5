"""A backend that answers at once, without a model: it streams the last user message back, word by word.

`qwenhost serve --model echo` uses it. It exists to measure and test what sits in front of a model (auth,
limits, metering, SSE) with nothing behind it, the way LiteLLM's proxy is measured in front of an instant
upstream. Token counts are whitespace-separated words, so tests can predict them exactly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from qwenhost.engine.sequence import GenerationRequest
from qwenhost.router.local import Delta, Finish, Prepared, RequestError
from qwenhost.router.openai_types import ChatCompletionRequest, CompletionRequest

ECHO_MODEL = "echo"


@dataclass
class EchoPrepared(Prepared):
    reply: list[str] = field(default_factory=list)
    truncated: bool = False


class EchoBackend:
    kind = "echo"

    def __init__(self, ctx_size: int = 32768) -> None:
        self.model_id = ECHO_MODEL
        self.aliases = {ECHO_MODEL}
        self.ctx_size = ctx_size

    def serves(self, model: str) -> bool:
        return model in self.aliases

    def load(self) -> dict[str, int]:
        return {"running": 0, "waiting": 0}

    def fingerprint_source(self) -> str:
        return "echo"

    def _prepared(self, prompt_words: int, reply: str, max_tokens: int | None, prompt_text: str) -> Prepared:
        words = reply.split() or ["(empty)"]
        limit = len(words) if max_tokens is None else max_tokens
        if prompt_words + limit > self.ctx_size:
            raise RequestError(400, f"prompt ({prompt_words} tokens) + max_tokens ({limit}) exceeds the context "
                                    f"({self.ctx_size} tokens)", param="max_tokens")
        # Prompt token ids carry no meaning here; only their count is used (usage, billing).
        return EchoPrepared(GenerationRequest(prompt_tokens=[0] * prompt_words, max_tokens=limit), None, [],
                            prompt_text, reply=words[:limit], truncated=len(words) > limit)

    def prepare_chat(self, req: ChatCompletionRequest) -> Prepared:
        texts = [m.text() or "" for m in req.messages]
        last_user = next((m.text() or "" for m in reversed(req.messages) if m.role == "user"), "")
        return self._prepared(sum(len(t.split()) for t in texts), last_user, req.requested_max_tokens(), "")

    def prepare_completion(self, req: CompletionRequest) -> Prepared:
        text = req.prompt_text()
        return self._prepared(len(text.split()), text, req.max_tokens, text)

    async def stream(self, prep: Prepared) -> AsyncIterator[Delta | Finish]:
        assert isinstance(prep, EchoPrepared)
        for i, w in enumerate(prep.reply):
            prep.completion_tokens += 1
            yield Delta(content=w if i == 0 else " " + w)
        yield Finish("length" if prep.truncated else "stop", len(prep.gen.prompt_tokens), prep.completion_tokens, 0)
