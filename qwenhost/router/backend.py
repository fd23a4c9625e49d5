"""What the API needs of a backend: the local engine (router/local.py) or the instant echo (router/echo.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from qwenhost.router.local import Delta, Finish, Prepared
from qwenhost.router.openai_types import ChatCompletionRequest, CompletionRequest


class Backend(Protocol):
    kind: str  # recorded in the usage ledger
    model_id: str
    aliases: set[str]

    def serves(self, model: str) -> bool: ...

    def load(self) -> dict[str, int]: ...

    def fingerprint_source(self) -> str: ...

    def prepare_chat(self, req: ChatCompletionRequest) -> Prepared: ...

    def prepare_completion(self, req: CompletionRequest) -> Prepared: ...

    def stream(self, prep: Prepared) -> AsyncIterator[Delta | Finish]: ...
