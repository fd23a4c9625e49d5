"""Continuous batching: one llama_decode per step over every running sequence.

Each step puts one decode token per generating sequence first, then prompt tokens of prefilling
sequences up to a per-step budget, so a long prompt is chunked across steps and never stalls the
running streams for long. Requests join and leave between steps.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from qwenhost.engine.kv_cache import SlotTable
from qwenhost.engine.metrics import EngineMetrics
from qwenhost.engine.runner import ModelRunner
from qwenhost.engine.sampling import GrammarError, TokenSampler
from qwenhost.engine.sequence import BUDGET_CLOSE_TEXT, SeqState, Sequence, StepOutput

log = logging.getLogger(__name__)


# The scheduler thread's name in the OS (top -H, /proc/PID/task/*/comm). llama.cpp's compute threads are started
# from it and inherit the name, so one name covers all the CPU the model's steps take.
ENGINE_THREAD_NAME = "qh-engine"


def name_os_thread(name: str) -> None:
    """Name the calling thread for the OS (Linux; up to 15 bytes). Python 3.11 names threads only for itself."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


class QueueFullError(RuntimeError):
    """More requests are waiting than the queue holds; the API answers 429."""


# The default ITL target, a multiple of a decode-only step. Steps carrying a prompt chunk vary by a few percent
# around the target, so the 95th percentile of the streams' gaps lands above it: measured on the interference
# workload (8 streams, a 3,000-token prompt), 2.8x gave a p95 of 2.96-2.98x undisturbed and 2.6x 2.72-2.73x,
# for a long-prompt TTFT 4 % later (docs/benchmarks.md).
DEFAULT_ITL_RATIO = 2.6


@dataclass(frozen=True)
class SchedulerConfig:
    parallel: int = 8
    prefill_chunk: int = 512  # most prompt tokens per step (when nobody is decoding)
    max_queue: int = 64
    # While streams are decoding, a step's prompt tokens are limited so the step takes about this long:
    # a colleague's long document costs running streams a bounded pause per token, not a freeze. Either a
    # multiple of the measured decode-only step (the default: ITL stays within 3x of undisturbed, on any
    # machine and model) or, when itl_target_s is set, that many seconds.
    itl_target_s: float | None = None
    itl_target_ratio: float = DEFAULT_ITL_RATIO


BURST_S = 1.0  # requests arriving within this long of each other count as one burst (see step)
PREFILL_FLOOR = 8  # prompt tokens a step always takes, so a long prompt progresses however busy decoding is


@dataclass
class StepCosts:
    """What steps cost, measured as they run (EMAs): how many prompt tokens fit the ITL target."""

    sec_per_token: float | None = None  # an average batch token
    decode_step_s: float | None = None  # a step with only decode tokens
    sec_per_prompt_token: float | None = None  # what one prompt token adds to a decode step

    @staticmethod
    def _ema(old: float | None, new: float) -> float:
        return new if old is None else 0.7 * old + 0.3 * new

    def learn(self, dt: float, n_batch: int, n_prompt: int) -> None:
        if n_prompt == 0:
            self.decode_step_s = self._ema(self.decode_step_s, dt)
            return
        self.sec_per_token = self._ema(self.sec_per_token, dt / n_batch)
        if n_batch > n_prompt and self.decode_step_s is not None and dt > self.decode_step_s:
            self.sec_per_prompt_token = self._ema(self.sec_per_prompt_token, (dt - self.decode_step_s) / n_prompt)

    def prefill_budget(self, n_decoding: int, cfg: SchedulerConfig) -> int:
        """Prompt tokens for a step: all we may when nobody waits on tokens, else what keeps the step within
        the ITL target (a multiple of a decode-only step, or seconds)."""
        if n_decoding == 0 or self.sec_per_token is None:
            return cfg.prefill_chunk
        if self.decode_step_s is None or self.sec_per_prompt_token is None:
            # Not measured yet: the average batch token's cost against the target (or 1 s).
            fit = int((cfg.itl_target_s or 1.0) / self.sec_per_token) - n_decoding
        else:
            target = cfg.itl_target_s or cfg.itl_target_ratio * self.decode_step_s
            fit = int((target - self.decode_step_s) / self.sec_per_prompt_token)
        return max(PREFILL_FLOOR, min(cfg.prefill_chunk, fit))


def prefill_order(seqs: list[Sequence], now: float, sec_per_token: float | None) -> list[Sequence]:
    """Shortest remaining prompt first, with aging: a prompt that has waited W seconds counts as W seconds of
    work shorter. Short prompts get their first token quickly instead of queueing behind a long document
    (which lowers the median time to first token), and no prompt waits forever behind a stream of short ones."""
    rate = sec_per_token if sec_per_token else 1.0 / 60
    return sorted(seqs, key=lambda s: (s.remaining_prefill * rate - (now - s.created), s.id))


class Scheduler:
    def __init__(self, runner: ModelRunner, cfg: SchedulerConfig, metrics: EngineMetrics,
                 after_step: Callable[[], None] | None = None) -> None:
        self.runner = runner
        self.after_step = after_step or (lambda: None)  # delivers the step's outputs (Engine's Outbox)
        self.cfg = cfg
        self.metrics = metrics
        self.slots = SlotTable(runner, runner.cfg.n_seq_max)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._budget_close = runner.tokenize(BUDGET_CLOSE_TEXT, parse_special=True)
        self.costs = StepCosts()

    # -- called from other threads ------------------------------------------------------------
    def submit(self, seq: Sequence) -> None:
        with self._cv:
            if len(self.waiting) >= self.cfg.max_queue:
                raise QueueFullError(f"{len(self.waiting)} requests are already waiting")
            self.waiting.append(seq)
            self.metrics.queue_depth.set(len(self.waiting))
            self._cv.notify()

    def cancel(self, seq: Sequence) -> None:
        with self._cv:
            seq.cancelled = True
            self._cv.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_loop, name="qwenhost-scheduler", daemon=True)
        self._thread.start()

    def _run_loop(self) -> None:
        name_os_thread(ENGINE_THREAD_NAME)
        self._loop()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread:
            self._thread.join(timeout=30)

    # -- the loop (scheduler thread only) --------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self.waiting and not self.running:
                    self._cv.wait()
                if self._stop:
                    break
            try:
                self.step()
            except Exception as exc:  # keep serving: fail the sequences of this step, not the process
                log.exception("engine step failed")
                for seq in list(self.running):
                    self._finish(seq, "error", error=f"engine error: {exc}", keep=False)
            self.after_step()
        for seq in list(self.running) + list(self.waiting):
            self._finish(seq, "cancelled", keep=False)
        self.after_step()

    def _drop_cancelled(self) -> None:
        with self._cv:
            gone = [s for s in self.waiting if s.cancelled]
            for s in gone:
                self.waiting.remove(s)
        for s in gone:
            self._finish(s, "cancelled", keep=False)
        for s in [s for s in self.running if s.cancelled]:
            self._finish(s, "cancelled", keep=False)

    def _admit(self) -> None:
        while len(self.running) < self.cfg.parallel:
            with self._cv:
                if not self.waiting:
                    break
                seq = self.waiting[0]
            if seq.sampler is None:
                try:
                    params = seq.req.sampling
                    if seq.req.ignore_eos:  # as llama.cpp does: end tokens are banned, not generated past
                        bias = {**params.logit_bias, **dict.fromkeys(self.runner.eog_tokens(), float("-inf"))}
                        params = dataclasses.replace(params, logit_bias=bias)
                    seq.sampler = TokenSampler(self.runner, params, seq.req.grammar)
                    seq.sampler.grammar_enabled = not seq.in_think
                except GrammarError as exc:
                    with self._cv:
                        self.waiting.popleft()
                    self._finish(seq, "error", error=str(exc), keep=False)
                    continue
            if not self.slots.assign(seq):
                break
            with self._cv:
                self.waiting.popleft()
                self.metrics.queue_depth.set(len(self.waiting))
            if seq.state == SeqState.WAITING and not seq.generated:
                self.metrics.cached_tokens.inc(seq.n_cached)
            seq.state = SeqState.PREFILLING
            self.running.append(seq)
        self.metrics.running.set(len(self.running))

    def step(self) -> None:
        self._drop_cancelled()
        self._admit()
        if not self.running:
            return
        decoding = [seq for seq in self.running if seq.state == SeqState.DECODING]
        if self.slots.per_sequence:
            self.metrics.stream_moves.inc(self.slots.compact(self.running, decoding))
        decode = [(seq, [seq.tokens[seq.n_past]], True) for seq in decoding]
        prompt = self._plan_prefill(len(decode))
        if not decode and not prompt:
            return
        n_prompt = sum(len(chunk) for _, chunk, _ in prompt)
        # One llama_decode over everything: one pass over the weights for all rows. (Stock llama.cpp's CPU flash
        # attention made a step mixing decode rows with a prompt chunk of 64 rows or more cost a pass over the whole
        # unified cache; qwenhost's kernel, scripts/llama-cpp-patches/0003, groups only rows that see the same cells.)
        t0 = time.perf_counter()
        if not self._run(decode + prompt):
            return  # no room in the KV pool: memory was relieved, what was not computed is retried
        self.metrics.prompt_tokens.inc(n_prompt)
        dt = time.perf_counter() - t0
        self.costs.learn(dt, len(decode) + n_prompt, n_prompt)
        kind = "prefill" if not decode else "decode" if not prompt else "mixed"
        self.metrics.step_seconds.labels(kind).observe(dt)

    def _plan_prefill(self, n_decoding: int) -> list[tuple[Sequence, list[int], bool]]:
        """This step's prompt chunks, (sequence, tokens, last chunk of its prompt), within the step's budget."""
        total = min(self.cfg.prefill_chunk, self.runner.batch.capacity - n_decoding)
        limited = min(self._prefill_budget(n_decoding), total)
        # The ITL target protects streams from prompts that arrived after them; prompts that came with them (a
        # burst) are computed in full chunks, which is what finishes a burst soonest.
        oldest_stream = min((s.created for s in self.running if s.state == SeqState.DECODING), default=None)
        plan = []
        for seq in prefill_order([s for s in self.running if s.state == SeqState.PREFILLING], time.monotonic(),
                                 self.costs.sec_per_token):
            protected = oldest_stream is not None and seq.created > oldest_stream + BURST_S
            budget = min(total, limited) if protected else total
            if budget <= 0:
                if total <= 0:
                    break
                continue
            copied_before = seq.n_cached
            if not self.slots.resolve_share(seq):
                continue
            self.metrics.cached_tokens.inc(seq.n_cached - copied_before)
            k = min(seq.remaining_prefill, budget)
            plan.append((seq, seq.tokens[seq.n_past: seq.n_past + k], k == seq.remaining_prefill))
            total -= k
            limited -= k
        return plan

    def _run(self, part: list[tuple[Sequence, list[int], bool]]) -> bool:
        """One llama_decode over `part`, then the next token of every sequence that wanted logits.
        False when the KV pool had no room (memory was relieved; the step is retried)."""
        batch = self.runner.batch
        batch.clear()
        # In slot order: with per-sequence streams llama.cpp puts sequences in one ubatch only while their ids
        # run consecutively (split_equal), so an unordered batch would cost a weights pass per sequence.
        part = sorted(part, key=lambda p: p[0].slot)
        idxs = [batch.add(chunk, seq.n_past, seq.slot, want) for seq, chunk, want in part]
        rc = self.runner.decode()
        if rc == 1:
            self._relieve_memory()
            return False
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        now = time.monotonic()
        for (seq, chunk, want), idx in zip(part, idxs, strict=True):
            seq.n_past += len(chunk)
            if want and seq.state != SeqState.FINISHED:
                self._next_token(seq, idx, now)
        return True

    def _prefill_budget(self, n_decoding: int) -> int:
        return self.costs.prefill_budget(n_decoding, self.cfg)

    def _relieve_memory(self) -> None:
        """No KV cells left for this batch: drop idle caches, else preempt the newest sequence."""
        before = self.slots.used_tokens()
        self.slots.evict_idle(self.slots.pool_tokens)
        if self.slots.used_tokens() < before:
            return
        if len(self.running) <= 1:
            for seq in list(self.running):
                self._finish(seq, "error", error="the KV cache is full; lower max_tokens", keep=False)
            return
        victim = self.running.pop()
        self.slots.release(victim, keep=False)
        victim.n_past = 0
        victim.state = SeqState.WAITING
        with self._cv:
            self.waiting.appendleft(victim)
        log.info("KV pool full: preempted sequence %s (it will recompute)", victim.id)

    def _next_token(self, seq: Sequence, idx: int, now: float) -> None:
        if seq.state == SeqState.PREFILLING:
            seq.state = SeqState.DECODING
        if seq.forced:
            tok = seq.forced.pop(0)
            seq.sampler.accept_forced(tok)
        else:
            try:
                tok = seq.sampler.sample(idx)
            except GrammarError as exc:
                self._finish(seq, "error", error=str(exc), keep=False)
                return
        if seq.first_token_at is None:
            seq.first_token_at = now
            self.metrics.ttft.observe(now - seq.created)
        elif seq.last_token_at is not None:
            self.metrics.itl.observe(now - seq.last_token_at)
        seq.last_token_at = now
        if self.runner.is_eog(tok) and not seq.req.ignore_eos:
            self._finish(seq, "stop")
            return
        seq.tokens.append(tok)
        seq.generated.append(tok)
        self.metrics.completion_tokens.inc()
        text = seq.text_for(self.runner.piece(tok))
        seq.track_thinking(text)
        budget = seq.req.thinking_budget
        if seq.in_think and budget is not None and seq.think_tokens >= budget and not seq.think_closed_by_budget:
            seq.think_closed_by_budget = True
            seq.forced = list(self._budget_close)
        seq.sampler.grammar_enabled = not seq.in_think
        out, hit = seq.stop.push(text)
        if hit:
            seq.emit(StepOutput(out, 1))
            self._finish(seq, "stop")
        elif len(seq.generated) >= seq.req.max_tokens:
            seq.emit(StepOutput(out, 1))
            self._finish(seq, "length")
        else:
            seq.emit(StepOutput(out, 1))

    def _finish(self, seq: Sequence, reason: str, *, error: str | None = None, keep: bool = True) -> None:
        if seq.state == SeqState.FINISHED:
            return
        if seq in self.running:
            self.running.remove(seq)
        self.slots.release(seq, keep=keep)
        seq.state = SeqState.FINISHED
        seq.finish_reason = reason
        if seq.sampler is not None:
            seq.sampler.close()
        tail = seq.finish_text() if reason in ("stop", "length") else ""
        self.metrics.running.set(len(self.running))
        seq.emit(StepOutput(tail, 0, reason, error, seq.prompt_len, seq.n_cached))
