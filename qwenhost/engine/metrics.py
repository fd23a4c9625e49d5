"""Prometheus metrics the engine keeps; the API exports them at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge("qwenhost_queue_depth", "Requests waiting for a sequence slot", registry=registry)
        self.running = Gauge("qwenhost_running_sequences", "Sequences prefilling or decoding", registry=registry)
        self.prompt_tokens = Counter(
            "qwenhost_prompt_tokens_computed", "Prompt tokens run through the model", registry=registry
        )
        self.completion_tokens = Counter("qwenhost_completion_tokens", "Tokens generated", registry=registry)
        self.cached_tokens = Counter(
            "qwenhost_cache_hit_tokens", "Prompt tokens reused from the KV cache", registry=registry
        )
        self.ttft = Histogram(
            "qwenhost_time_to_first_token_seconds", "Queue + prefill time until the first token",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        # Where the compute time goes: steps with only decode tokens, only prompt tokens, or both (one
        # llama_decode either way; see Scheduler.step).
        self.step_seconds = Histogram(
            "qwenhost_engine_step_seconds", "One scheduler step (one llama_decode)", ["kind"],
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.stream_moves = Counter(
            "qwenhost_kv_stream_moves", "Sequences moved to a lower slot to keep per-sequence streams consecutive",
            registry=registry,
        )
        self.itl = Histogram(
            "qwenhost_inter_token_latency_seconds", "Time between two tokens of one stream",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
