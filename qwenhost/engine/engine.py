"""Engine: the facade the rest of qwenhost uses — load a GGUF, run the scheduler thread, stream tokens.

Async callers get an async iterator of StepOutput per request; the scheduler thread hands outputs to
the caller's event loop with call_soon_threadsafe, so HTTP work never runs on the compute thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from qwenhost.engine.metrics import EngineMetrics
from qwenhost.engine.outbox import Outbox
from qwenhost.engine.runner import ModelRunner, RunnerConfig
from qwenhost.engine.sampling import SamplingParams
from qwenhost.engine.scheduler import DEFAULT_ITL_RATIO, Scheduler, SchedulerConfig
from qwenhost.engine.sequence import GenerationRequest, SeqState, Sequence, StepOutput

log = logging.getLogger(__name__)

# Qwen's recommended sampling when the GGUF carries no generation config (Qwen2.5 / Qwen3 non-thinking
# generation_config.json); thinking mode uses Qwen3's documented thinking values.
QWEN_DEFAULTS = SamplingParams(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
QWEN_THINKING_DEFAULTS = SamplingParams(temperature=0.6, top_p=0.95, top_k=20)


@dataclass(frozen=True)
class EngineConfig:
    model_path: Path
    ctx_size: int = 32768
    parallel: int = 8
    threads: int = 0
    prefill_chunk: int = 512
    itl_target_s: float | None = None  # seconds; None = itl_target_ratio x a decode-only step
    itl_target_ratio: float = DEFAULT_ITL_RATIO
    max_queue: int = 64
    n_batch: int = 2048
    n_ubatch: int = 512
    # "unified": one KV pool; a shared prefix is referenced, not copied, and one request may use the whole
    # context. "per-sequence": each of `parallel` sequences gets ctx_size / parallel cells of its own, which
    # makes batched decode cheaper on CPUs (docs/engine.md) and caps a request at that share.
    kv_layout: str = "unified"


KV_LAYOUTS = ("unified", "per-sequence")
MIN_STREAM_TOKENS = 256  # llama.cpp pads a per-sequence stream to 256 cells


def check_kv_layout(layout: str, ctx_size: int, parallel: int) -> None:
    """Raise ValueError, saying what to change, for a layout that cannot work with these sizes."""
    if layout not in KV_LAYOUTS:
        raise ValueError(f"unknown KV layout {layout!r}; use one of: {', '.join(KV_LAYOUTS)}")
    if layout == "per-sequence" and ctx_size // parallel < MIN_STREAM_TOKENS:
        raise ValueError(f"--ctx-size {ctx_size} gives each of {parallel} sequences fewer than "
                         f"{MIN_STREAM_TOKENS} tokens; raise --ctx-size or lower --parallel")


class Engine:
    def __init__(self, cfg: EngineConfig, registry: CollectorRegistry | None = None) -> None:
        self.cfg = cfg
        self.registry = registry or CollectorRegistry()
        self.metrics = EngineMetrics(self.registry)
        check_kv_layout(cfg.kv_layout, cfg.ctx_size, cfg.parallel)
        unified = cfg.kv_layout == "unified"
        # A unified pool keeps extra idle slots whose finished sequences stay resident for reuse; per-sequence
        # streams would split the context further for them, so there every slot is a running one.
        n_seq = min(cfg.parallel + max(cfg.parallel, 4), 256) if unified else cfg.parallel
        self.runner = ModelRunner(
            RunnerConfig(
                model_path=cfg.model_path,
                n_ctx=cfg.ctx_size,
                n_seq_max=n_seq,
                n_batch=max(cfg.n_batch, cfg.prefill_chunk + cfg.parallel),
                n_ubatch=cfg.n_ubatch,
                n_threads=cfg.threads,
                kv_unified=unified,
            )
        )
        self.chat_template = self.runner.meta("tokenizer.chat_template")
        self.model_name = self.runner.meta("general.name") or cfg.model_path.stem
        self.bos_text = self._token_text("tokenizer.ggml.bos_token_id")
        self.eos_text = self._token_text("tokenizer.ggml.eos_token_id")
        self.outbox = Outbox()
        self.scheduler = Scheduler(
            self.runner,
            SchedulerConfig(parallel=cfg.parallel, prefill_chunk=cfg.prefill_chunk, max_queue=cfg.max_queue,
                            itl_target_s=cfg.itl_target_s, itl_target_ratio=cfg.itl_target_ratio),
            self.metrics,
            after_step=self.outbox.flush,
        )
        self.scheduler.start()

    def _token_text(self, key: str) -> str:
        v = self.runner.meta(key)
        if v is None:
            return ""
        try:
            return self.runner.piece(int(v)).decode("utf-8", "replace")
        except ValueError:
            return ""

    @property
    def context_limit(self) -> int:
        """Most tokens (prompt + completion) one request may use."""
        limit = self.runner.n_ctx_seq
        if self.runner.n_ctx_train > 0:
            limit = min(limit, self.runner.n_ctx_train)
        return limit

    def memory_summary(self) -> str:
        kv = self.runner.kv_bytes_per_token() * self.runner.n_ctx
        if self.runner.cfg.kv_unified:
            layout = f"{self.runner.n_ctx} tokens shared by up to {self.cfg.parallel} sequences"
        else:
            layout = f"{self.runner.n_ctx_seq} tokens for each of {self.cfg.parallel} sequences"
        return (
            f"weights {self.runner.model_size_bytes / 2**20:.0f} MiB + KV cache {kv / 2**20:.0f} MiB "
            f"({layout}), {self.runner.n_threads} threads"
        )

    def sampling_defaults(self, thinking: bool) -> SamplingParams:
        base = QWEN_THINKING_DEFAULTS if thinking else QWEN_DEFAULTS
        p = SamplingParams(**{k: getattr(base, k) for k in base.__dataclass_fields__})
        for key, attr, cast in (
            ("general.sampling.temp", "temperature", float),
            ("general.sampling.top_p", "top_p", float),
            ("general.sampling.top_k", "top_k", int),
            ("general.sampling.min_p", "min_p", float),
        ):
            v = self.runner.meta(key)
            if v is not None:
                try:
                    setattr(p, attr, cast(v))
                except ValueError:
                    pass
        return p

    def tokenize(self, text: str) -> list[int]:
        return self.runner.tokenize(text, add_special=False, parse_special=True)

    def token_id(self, text: str) -> int | None:
        return self.runner.single_token(text)

    async def generate(self, req: GenerationRequest) -> AsyncIterator[StepOutput]:
        """Stream a request's outputs; leaving the iterator early cancels the sequence at once."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StepOutput] = asyncio.Queue()

        def emit(out: StepOutput) -> None:
            if loop.is_closed():  # the caller's loop is gone; the sequence is cancelled below
                seq.cancelled = True
                return
            self.outbox.post(loop, queue.put_nowait, out)

        seq = Sequence(req, emit)
        self.scheduler.submit(seq)
        try:
            while True:
                out = await queue.get()
                yield out
                if out.finish_reason is not None:
                    return
        finally:
            if seq.state != SeqState.FINISHED:
                self.scheduler.cancel(seq)

    def close(self) -> None:
        self.scheduler.stop()
        self.runner.close()
