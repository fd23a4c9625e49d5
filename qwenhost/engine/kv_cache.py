"""Slots of the KV cache and prefix reuse between them.

Each llama.cpp sequence id is a slot. A finished sequence leaves its tokens resident (an idle slot) so
the next turn of the same chat, or any request sharing its prefix, reuses them. A new request takes the
longest common token prefix found in any slot: in place when that slot is idle, otherwise by seq_cp into
a free slot — in a unified pool that shares the cells, so a system prompt is computed once; with per-sequence
streams it copies the source's stream (still far cheaper than computing the prefix again).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from qwenhost.engine.runner import ModelRunner
from qwenhost.engine.sequence import Sequence

# Copying a prefix from another slot costs a little bookkeeping; below this it is not worth it.
MIN_SHARED_PREFIX = 8


@dataclass
class Slot:
    index: int
    owner: Sequence | None = None
    tokens: list[int] = field(default_factory=list)  # resident tokens while idle
    last_used: float = 0.0

    def resident(self) -> list[int]:
        if self.owner is not None:
            return self.owner.tokens[: self.owner.n_past]
        return self.tokens


def common_prefix_len(a: list[int], b: list[int]) -> int:
    return len(os.path.commonprefix([a, b]))


class SlotTable:
    def __init__(self, runner: ModelRunner, n_slots: int, share_prefixes: bool = True) -> None:
        self.runner = runner
        self.slots = [Slot(i) for i in range(n_slots)]
        self.pool_tokens = runner.n_ctx
        self.share_prefixes = share_prefixes
        # Per-sequence streams: a slot's tokens live in its own stream, so other slots' tokens never crowd it
        # out and evicting them frees nothing it could use.
        self.per_sequence = not runner.cfg.kv_unified
        self.compact_after_idle_s = 2.0

    def used_tokens(self) -> int:
        # Counts shared cells once per slot: an upper bound, which keeps admission safe.
        return sum(len(s.resident()) for s in self.slots)

    def active(self) -> int:
        return sum(1 for s in self.slots if s.owner is not None)

    def _free(self) -> list[Slot]:
        return [s for s in self.slots if s.owner is None]

    def evict_idle(self, need: int, keep: Slot | None = None) -> None:
        """Drop idle slots' tokens, least recently used first, until `need` more tokens fit."""
        if self.per_sequence:
            return
        idle = sorted((s for s in self._free() if s.tokens and s is not keep), key=lambda s: s.last_used)
        for s in idle:
            if self.used_tokens() + need <= self.pool_tokens:
                return
            self.runner.seq_rm(s.index)
            s.tokens = []

    def fits(self, need: int) -> bool:
        if self.per_sequence:
            return need <= self.runner.n_ctx_seq
        return self.used_tokens() + need <= self.pool_tokens

    def assign(self, seq: Sequence) -> bool:
        """Give `seq` a slot with the longest reusable prefix; False when no slot or memory is free."""
        free = self._free()
        if not free:
            return False
        prompt = seq.tokens
        cap = len(prompt) - 1  # at least one token must be computed to get logits
        best_idle, best_idle_len = None, -1
        best_any, best_any_len = None, -1
        best_soon, best_soon_len = None, 0
        for s in self.slots:
            n = min(common_prefix_len(s.resident(), prompt), cap)
            if s.owner is None and n > best_idle_len:
                best_idle, best_idle_len = s, n
            if n > best_any_len:
                best_any, best_any_len = s, n
            if s.owner is not None and s.owner.n_past < s.owner.prompt_len:
                # Still prefilling: what it will have computed once its prompt is in.
                m = min(common_prefix_len(s.owner.tokens[: s.owner.prompt_len], prompt), cap)
                if m > best_soon_len:
                    best_soon, best_soon_len = s, m
        pending = (self.share_prefixes and best_soon is not None and best_soon_len >= MIN_SHARED_PREFIX
                   and best_soon_len > max(best_any_len, best_idle_len) + MIN_SHARED_PREFIX)
        use_copy = (
            self.share_prefixes
            and best_any is not None
            and best_any.owner is not None
            and best_any_len >= MIN_SHARED_PREFIX
            and best_any_len > best_idle_len
        )
        if use_copy:
            dst = min((s for s in free if not s.tokens), default=None, key=lambda s: s.index)
            if dst is None:
                dst = min(free, key=lambda s: (common_prefix_len(s.tokens, prompt), s.last_used))
            reuse = 0
        else:
            dst = best_idle if best_idle is not None and best_idle_len > 0 else None
            if dst is None:
                dst = min((s for s in free if not s.tokens), default=None, key=lambda s: s.index)
            if dst is None:
                dst = min(free, key=lambda s: s.last_used)
            reuse = max(best_idle_len, 0) if dst is best_idle else 0
        if pending:  # copy later (resolve_share), from a slot that is computing it now
            use_copy = False
            dst = min((s for s in free if not s.tokens), default=None, key=lambda s: s.index)
            if dst is None:
                dst = min(free, key=lambda s: s.last_used)
            reuse = 0
        need = len(prompt) - (best_soon_len if pending else best_any_len if use_copy else reuse) + 1
        if not self.fits(need):
            self.evict_idle(need, keep=dst if reuse else None)
            if not self.fits(need) and self.active() > 0:
                return False
        if use_copy:
            self.runner.copy_prefix(best_any.index, dst.index, best_any_len)
            reuse = best_any_len
        elif not self.runner.seq_rm(dst.index, reuse, -1):
            # Recurrent/hybrid memory cannot drop a tail: start this slot from scratch.
            self.runner.seq_rm(dst.index)
            reuse = 0
        dst.tokens = []
        dst.owner = seq
        seq.slot = dst.index
        seq.n_past = reuse
        if pending:
            assert best_soon is not None
            seq.share_src, seq.share_len = best_soon.index, best_soon_len
        if not seq.generated:  # a preempted sequence keeps the cache hit it reported first
            seq.n_cached = reuse
        return True

    def resolve_share(self, seq: Sequence) -> bool:
        """For a sequence waiting on a prefix another slot is computing: copy it once it is there.
        True when the sequence may prefill now (copied, or the source went away), False to wait a step."""
        if seq.share_src < 0:
            return True
        src = self.slots[seq.share_src]
        have = min(common_prefix_len(src.resident(), seq.tokens), seq.share_len)
        still_coming = src.owner is not None and src.owner.n_past < src.owner.prompt_len and have < seq.share_len
        if still_coming:
            return False
        seq.share_src, seq.share_len = -1, 0
        if have >= MIN_SHARED_PREFIX and have > seq.n_past:
            self.runner.copy_prefix(src.index, seq.slot, have)
            seq.n_past = have
            if not seq.generated:
                seq.n_cached = have
        return True

    def compact(self, running: list[Sequence], decoding: list[Sequence], max_moves: int = 2) -> int:
        """Per-sequence streams only: move the decoding sequence with the highest slot into a free slot below the
        others, so the running slots stay consecutive. llama.cpp cuts a micro-batch wherever slot ids skip one,
        and each cut costs one more pass over the weights every step (measured on the default model, 16 streams:
        0.59 s a step packed, 1.22 s with a gap after each). A move copies one stream (tens of MiB) once.
        Free slots whose tokens were used within `compact_after_idle_s` are left alone: a chat's next turn is
        usually about to reuse them; of the others, an empty one is taken first, then the one idle longest.
        Returns the number of moves."""
        if not self.per_sequence:
            return 0
        moves = 0
        now = time.monotonic()
        while moves < max_moves and decoding:
            ids = sorted(q.slot for q in running)
            if ids[-1] - ids[0] + 1 == len(ids):
                break
            top = max(decoding, key=lambda q: q.slot)
            if top.slot != ids[-1]:
                break  # the highest is prefilling; it joins the others' micro-batch as it is
            usable = [s.index for s in self.slots if s.owner is None
                      and (not s.tokens or now - s.last_used >= self.compact_after_idle_s)]
            gaps = [i for i in usable if ids[0] < i < top.slot] or [i for i in usable if i == ids[0] - 1]
            if not gaps:
                break
            # The move drops the target's idle history: an empty slot first, else the history used longest ago.
            target = min(gaps, key=lambda i: (bool(self.slots[i].tokens), self.slots[i].last_used, i))
            dst, src = self.slots[target], self.slots[top.slot]
            self.runner.copy_prefix(src.index, dst.index, top.n_past)
            dst.owner, dst.tokens = top, []
            src.owner, src.tokens, src.last_used = None, top.tokens[: top.n_past], now
            top.slot = dst.index
            moves += 1
        return moves

    def release(self, seq: Sequence, keep: bool = True) -> None:
        if seq.slot < 0:
            return
        s = self.slots[seq.slot]
        s.owner = None
        s.last_used = time.monotonic()
        if keep:
            s.tokens = seq.tokens[: seq.n_past]
        else:
            self.runner.seq_rm(s.index)
            s.tokens = []
        seq.slot = -1
