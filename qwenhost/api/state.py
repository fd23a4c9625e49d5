"""What the HTTP app knows about the serving process: the backend once loaded, or why it is not yet."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from qwenhost.gateway.service import Gateway
from qwenhost.router.backend import Backend


@dataclass
class ServerState:
    model_id: str
    gateway: Gateway
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    backend: Backend | None = None
    load_error: str | None = None
    loading_since: float = field(default_factory=time.monotonic)
    fingerprint: str = "fp_qwenhost"
    max_body_bytes: int = 8 * 2**20

    def set_backend(self, backend: Backend, model_sha: str = "") -> None:
        self.backend = backend
        digest = hashlib.sha256(f"{self.model_id}:{model_sha}:{backend.fingerprint_source()}".encode()).hexdigest()
        self.fingerprint = "fp_" + digest[:10]

    def loading_message(self) -> str:
        if self.load_error:
            return f"the model failed to load: {self.load_error}"
        waited = time.monotonic() - self.loading_since
        return f"the model {self.model_id} is still loading ({waited:.0f}s so far); retry shortly"
