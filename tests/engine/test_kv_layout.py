"""The per-sequence KV layout on the real 0.5B model: each sequence decodes in a stream of its own, a shared
prefix is copied stream to stream, and a request is capped at its stream's share of the context."""

from __future__ import annotations

import asyncio

import pytest

from qwenhost.engine.engine import Engine, EngineConfig, check_kv_layout
from qwenhost.engine.sequence import GenerationRequest
from tests.engine.test_engine import GREEDY, chat_prompt, check_shared_prompt_computed_once, forget_idle, run


@pytest.fixture(scope="module")
def engine(small_model_path):
    eng = Engine(EngineConfig(model_path=small_model_path, ctx_size=4096, parallel=4, prefill_chunk=64,
                              kv_layout="per-sequence"))
    yield eng
    eng.close()


def trace_batches(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The sequence id of every token of every llama_decode call from now on."""
    batches: list[list[int]] = []
    real_decode = engine.runner.decode

    def traced() -> int:
        b = engine.runner.batch
        batches.append(b.seq_id[: b.n].tolist())
        return real_decode()

    monkeypatch.setattr(engine.runner, "decode", traced)
    return batches


def test_each_sequence_gets_its_share_of_the_context(engine):
    assert not engine.runner.cfg.kv_unified
    assert engine.runner.n_ctx_seq == 1024 and engine.context_limit == 1024
    assert len(engine.scheduler.slots.slots) == 4  # no extra idle slots: they would split the context further
    assert "1024 tokens for each of 4 sequences" in engine.memory_summary()


def test_batched_results_equal_solo_results_and_decode_in_slot_order(engine, monkeypatch):
    """Greedy outputs do not depend on the batch; the batch lists sequences by slot, which llama.cpp needs to
    put per-sequence streams in one ubatch."""
    users = ["Name a color.", "Name a fruit.", "Name an animal.", "Name a country.", "Name a planet."]
    reqs = [GenerationRequest(chat_prompt(engine, u, "Be brief."), 12, GREEDY) for u in users]
    solo = [asyncio.run(run(engine, r))[0] for r in reqs]
    orders = trace_batches(engine, monkeypatch)

    async def together():
        # They take the slots holding the solo runs' prefixes, not in arrival order (unsorted batches showed).
        return await asyncio.gather(*[run(engine, r) for r in reqs])

    both = [r[0] for r in asyncio.run(together())]
    assert all(solo) and both == solo
    assert max(len(set(o)) for o in orders) == 4, orders  # four streams decoded together
    assert all(o == sorted(o) for o in orders), orders


def test_a_shared_prefix_is_copied_from_another_stream(engine):
    """A request that shares a long system prompt with another slot's sequence starts from a copy of that
    stream, and answers as if it had computed the prefix itself."""
    system = "You answer questions about the solar system in one short sentence. " * 8
    n_system = len(engine.tokenize(f"<|im_start|>system\n{system}<|im_end|>\n"))
    first = GenerationRequest(chat_prompt(engine, "Biggest planet?", system), 40, GREEDY, ignore_eos=True)
    second = GenerationRequest(chat_prompt(engine, "Smallest planet?", system), 8, GREEDY)

    async def overlapping():
        agen = engine.generate(first)
        async for out in agen:  # the first is decoding (its slot busy) when the second arrives
            if out.n_tokens:
                break
        result = await run(engine, second)
        await agen.aclose()
        return result

    forget_idle(engine)  # start from empty streams so only the running one has the prefix
    text, _, _, cached = asyncio.run(overlapping())
    assert cached >= n_system
    forget_idle(engine)
    alone = asyncio.run(run(engine, second))
    assert alone[3] == 0 and alone[0] == text


def test_a_finished_stream_in_the_middle_is_filled_by_the_highest_one(engine, monkeypatch):
    """When the sequence in slot 1 of 0..3 finishes, the one in slot 3 moves into slot 1 (a copy of its stream),
    so the three left decode as one micro-batch again, and every answer is what it is without the move."""
    slots = engine.scheduler.slots
    monkeypatch.setattr(slots, "compact_after_idle_s", 0.0)
    reqs = [GenerationRequest(chat_prompt(engine, u, "Be brief."), n, GREEDY, ignore_eos=True)
            for u, n in (("Name a color.", 24), ("Name a fruit.", 4), ("Name a tree.", 24), ("Name a dog.", 24))]
    async def together() -> list[str]:
        forget_idle(engine)  # empty slots, so the requests take 0..3 in order
        with engine.scheduler._cv:  # all four are admitted in one step, as the same batch each time
            tasks = [asyncio.ensure_future(run(engine, r)) for r in reqs]
            while len(engine.scheduler.waiting) < len(reqs):
                await asyncio.sleep(0)
        return [o[0] for o in await asyncio.gather(*tasks)]

    monkeypatch.setattr(slots, "compact", lambda *a, **k: 0)
    unmoved = asyncio.run(together())
    monkeypatch.undo()
    monkeypatch.setattr(slots, "compact_after_idle_s", 0.0)
    batches = trace_batches(engine, monkeypatch)
    moves_before = engine.metrics.stream_moves._value.get()
    moved = asyncio.run(together())
    assert engine.metrics.stream_moves._value.get() - moves_before == 1
    three = [b for b in batches if len(set(b)) == 3]
    assert three and all(sorted(set(b)) == [0, 1, 2] for b in three), batches
    assert moved == unmoved  # a broken copy would send the moved stream's answer elsewhere


def test_requests_arriving_together_copy_a_shared_system_prompt_once(engine):
    """The others wait for the first to compute the prefix, then copy its stream."""
    check_shared_prompt_computed_once(engine)


@pytest.mark.parametrize(("layout", "ctx", "parallel", "message"), [
    ("paged", 4096, 4, "unknown KV layout 'paged'"),
    ("per-sequence", 1024, 8, "fewer than 256 tokens"),
])
def test_bad_layouts_are_explained(layout, ctx, parallel, message):
    with pytest.raises(ValueError, match=message):
        check_kv_layout(layout, ctx, parallel)
    check_kv_layout("per-sequence", 4096, 16)
    check_kv_layout("unified", 256, 64)
