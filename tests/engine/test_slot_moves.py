"""Which free slot a per-sequence stream move takes (SlotTable.compact), on a runner that only records copies."""

from __future__ import annotations

import time
from types import SimpleNamespace

from qwenhost.engine.kv_cache import SlotTable


class RecordingRunner:
    def __init__(self) -> None:
        self.n_ctx = 4096
        self.cfg = SimpleNamespace(kv_unified=False)
        self.copies: list[tuple[int, int, int]] = []

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        self.copies.append((src, dst, n))


def table_with(running_slots: list[int], idle: dict[int, float]) -> tuple[SlotTable, RecordingRunner, list]:
    """Sequences decoding in ``running_slots``; ``idle`` maps a free slot to how many seconds ago its history
    (a finished chat turn) was last used. Other slots are free and empty."""
    runner = RecordingRunner()
    table = SlotTable(runner, 6)  # type: ignore[arg-type]
    now = time.monotonic()
    seqs = []
    for i in running_slots:
        seq = SimpleNamespace(slot=i, n_past=10, tokens=list(range(10 + i)))
        table.slots[i].owner = seq
        seqs.append(seq)
    for i, ago in idle.items():
        table.slots[i].tokens, table.slots[i].last_used = [7] * 20, now - ago
    return table, runner, seqs


def test_a_move_takes_an_empty_gap_before_one_holding_a_chat() -> None:
    # Running in 0 and 4; gaps 1 (a chat idle 5 s), 2 (empty) and 3 (a chat idle 60 s).
    table, runner, seqs = table_with([0, 4], {1: 5.0, 3: 60.0})
    assert table.compact(seqs, seqs, max_moves=1) == 1
    assert runner.copies == [(4, 2, 10)] and seqs[1].slot == 2
    assert table.slots[1].tokens and table.slots[3].tokens  # both histories kept


def test_without_an_empty_gap_the_history_idle_longest_goes() -> None:
    table, runner, seqs = table_with([0, 3], {1: 5.0, 2: 60.0})
    assert table.compact(seqs, seqs, max_moves=1) == 1
    assert runner.copies == [(3, 2, 10)]
    assert table.slots[1].tokens == [7] * 20  # the chat used 5 s ago is still there


def test_a_history_used_moments_ago_is_never_dropped() -> None:
    table, runner, seqs = table_with([0, 2], {1: 0.5})
    assert table.compact(seqs, seqs) == 0 and runner.copies == []
