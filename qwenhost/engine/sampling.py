"""Per-sequence token sampling on llama.cpp's sampler chain, with grammar constraints kept outside it.

The grammar sampler is expensive on Qwen's ~152k vocabulary, so it is not in the chain: we sample with
the chain, check the one sampled token against the grammar, and only when it is rejected mask the whole
vocabulary with the grammar and sample again (llama.cpp's own common_sampler does the same). Tokens are
accepted explicitly, and never into a grammar that rejected them (llama.cpp aborts the process then).

Logit bias and the repetition/frequency/presence penalties are not in the chain either. llama.cpp's
penalties sampler looks every one of the ~152k candidates up in a hash map of the window's tokens
(0.54 ms a token here, against 0.15 ms for the rest of a greedy sample), and Qwen's default
repetition_penalty of 1.05 puts it on every request. Only the window's tokens and the biased ones can
change, so `LogitEdits` edits those few cells of the logits row in place, with llama.cpp's arithmetic
in float32, lets the chain (or, for greedy decoding, one argmax) read the row, and puts the cells back.
"""

from __future__ import annotations

import ctypes
import math
import random
from collections import deque
from dataclasses import dataclass, field

import llama_cpp as L
import numpy as np

from qwenhost.engine.runner import ModelRunner

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


@dataclass
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    penalty_last_n: int = 64
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GrammarSpec:
    gbnf: str
    root: str = "root"
    lazy: bool = False
    trigger_patterns: tuple[str, ...] = ()
    trigger_tokens: tuple[int, ...] = ()


class GrammarError(ValueError):
    """The grammar text did not parse in llama.cpp (a 400 for the request that asked for it)."""


def make_grammar_sampler(runner: ModelRunner, spec: GrammarSpec) -> ctypes.c_void_p:
    gbnf = spec.gbnf.encode()
    root = spec.root.encode()
    if spec.lazy:
        pats = (ctypes.c_char_p * max(1, len(spec.trigger_patterns)))(
            *[p.encode() for p in spec.trigger_patterns]
        )
        toks = (L.llama_token * max(1, len(spec.trigger_tokens)))(*spec.trigger_tokens)
        smpl = L.llama_sampler_init_grammar_lazy_patterns(
            runner.vocab, gbnf, root, pats, len(spec.trigger_patterns), toks, len(spec.trigger_tokens)
        )
    else:
        smpl = L.llama_sampler_init_grammar(runner.vocab, gbnf, root)
    if not smpl:
        raise GrammarError("the constraint grammar could not be compiled by llama.cpp")
    return smpl


class LogitEdits:
    """Logit bias, then llama.cpp's penalties over the last `penalty_last_n` accepted tokens, on a few cells.

    Same order and formulas as llama.cpp's logit_bias and penalties samplers: a repeated token's logit is
    multiplied by the repetition penalty when <= 0 and divided by it otherwise, then count * frequency +
    presence is subtracted. `penalty_last_n` <= 0 turns the penalties off, as llama.cpp's clamp does.
    """

    def __init__(self, params: SamplingParams):
        bias = {int(t): b for t, b in params.logit_bias.items()}
        self.bias_ids = np.fromiter(bias.keys(), np.int64, len(bias))
        self.bias_vals = np.fromiter(bias.values(), np.float32, len(bias))
        self.window = max(int(params.penalty_last_n), 0)
        self.repeat = np.float32(params.repetition_penalty)
        self.freq = np.float32(params.frequency_penalty)
        self.present = np.float32(params.presence_penalty)
        self.penalize = self.window > 0 and not (
            self.repeat == 1 and self.freq == 0 and self.present == 0
        )
        self.recent: deque[int] = deque()
        self.counts: dict[int, int] = {}

    @property
    def empty(self) -> bool:
        return not self.bias_ids.size and not (self.penalize and self.counts)

    def accept(self, tok: int) -> None:
        if not self.penalize:
            return
        counts = self.counts
        counts[tok] = counts.get(tok, 0) + 1
        if len(self.recent) >= self.window:
            old = self.recent.popleft()
            left = counts[old] - 1
            if left:
                counts[old] = left
            else:
                del counts[old]
        self.recent.append(tok)

    def apply(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Edit `row` in place; returns (cells, their old values) for `restore`."""
        pen_ids = (np.fromiter(self.counts.keys(), np.int64, len(self.counts))
                   if self.penalize else self.bias_ids[:0])
        cells = np.union1d(self.bias_ids, pen_ids)
        old = row[cells]
        vals = old.copy()
        if self.bias_ids.size:
            vals[np.searchsorted(cells, self.bias_ids)] += self.bias_vals
        if pen_ids.size:
            at = np.searchsorted(cells, pen_ids)
            v = vals[at]
            v = np.where(v <= 0, v * self.repeat, v / self.repeat)
            n = np.fromiter(self.counts.values(), np.float32, len(self.counts))
            v -= n * self.freq + self.present
            vals[at] = v
        row[cells] = vals
        return cells, old

    @staticmethod
    def restore(row: np.ndarray, edit: tuple[np.ndarray, np.ndarray]) -> None:
        row[edit[0]] = edit[1]


class TokenSampler:
    """Samples the next token of one sequence from its logits row."""

    def __init__(self, runner: ModelRunner, params: SamplingParams, grammar: GrammarSpec | None = None):
        self.runner = runner
        self.params = params
        self.edits = LogitEdits(params)
        self.greedy = params.temperature <= 0
        self.chain = self._build_chain(params)
        self.grammar = make_grammar_sampler(runner, grammar) if grammar else None
        # The grammar only sees tokens after reasoning ends; the scheduler flips this.
        self.grammar_enabled = True
        self._cand: np.ndarray | None = None
        self._one = np.zeros(1, dtype=_TOKEN_DATA)

    @staticmethod
    def _build_chain(p: SamplingParams) -> ctypes.c_void_p:
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        add = L.llama_sampler_chain_add
        # Logit bias and penalties are applied by LogitEdits before the chain reads the row.
        if p.temperature <= 0:
            add(chain, L.llama_sampler_init_greedy())
            return chain
        if p.top_k > 0:
            add(chain, L.llama_sampler_init_top_k(p.top_k))
        if 0 < p.top_p < 1:
            add(chain, L.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0:
            add(chain, L.llama_sampler_init_min_p(p.min_p, 1))
        add(chain, L.llama_sampler_init_temp(p.temperature))
        seed = p.seed if p.seed is not None else random.getrandbits(32)
        add(chain, L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _candidates(self, batch_index: int) -> tuple[np.ndarray, L.llama_token_data_array]:
        n = self.runner.n_vocab
        if self._cand is None:
            self._cand = np.zeros(n, dtype=_TOKEN_DATA)
        cand = self._cand
        cand["id"] = np.arange(n, dtype=np.int32)
        cand["logit"] = self.runner.logits(batch_index)
        cand["p"] = 0.0
        arr = L.llama_token_data_array(
            cand.ctypes.data_as(ctypes.POINTER(L.llama_token_data)), n, -1, False
        )
        return cand, arr

    def sample(self, batch_index: int) -> int:
        edits = self.edits
        if edits.empty:
            tok = self._sample(batch_index)
        else:
            row = self.runner.logits(batch_index)
            edit = edits.apply(row)
            try:
                tok = self._sample(batch_index)
            finally:
                edits.restore(row, edit)
        edits.accept(tok)
        return tok

    def _sample(self, batch_index: int) -> int:
        if self.grammar is None or not self.grammar_enabled:
            if self.greedy:  # llama.cpp's greedy sampler also takes the first maximum
                return int(np.argmax(self.runner.logits(batch_index)))
            return int(L.llama_sampler_sample(self.chain, self.runner.ctx, batch_index))  # accepts too
        cand, arr = self._candidates(batch_index)
        L.llama_sampler_apply(self.chain, ctypes.byref(arr))
        tok = int(cand[arr.selected]["id"])
        if not self._grammar_allows(tok):
            cand, arr = self._candidates(batch_index)
            L.llama_sampler_apply(self.grammar, ctypes.byref(arr))
            L.llama_sampler_apply(self.chain, ctypes.byref(arr))
            if arr.selected < 0 or not math.isfinite(float(cand[arr.selected]["logit"])):
                raise GrammarError("the grammar allows no token here")
            tok = int(cand[arr.selected]["id"])
        L.llama_sampler_accept(self.chain, tok)
        if not self.runner.is_eog(tok):
            L.llama_sampler_accept(self.grammar, tok)
        return tok

    def _grammar_allows(self, tok: int) -> bool:
        one = self._one
        one["id"] = tok
        one["logit"] = 1.0
        one["p"] = 0.0
        arr = L.llama_token_data_array(one.ctypes.data_as(ctypes.POINTER(L.llama_token_data)), 1, -1, False)
        L.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        return bool(np.isfinite(one["logit"][0]))

    def accept_forced(self, tok: int) -> None:
        """A token the engine injected (thinking-budget close): penalties see it, the grammar does not."""
        self.edits.accept(tok)
        L.llama_sampler_accept(self.chain, tok)

    def close(self) -> None:
        if self.chain:
            L.llama_sampler_free(self.chain)
            self.chain = None
        if self.grammar:
            L.llama_sampler_free(self.grammar)
            self.grammar = None
