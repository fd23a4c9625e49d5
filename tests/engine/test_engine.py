"""The engine in-process on the real 0.5B model: batching, prefix reuse, budget, stops, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from qwenhost.engine.engine import Engine, EngineConfig
from qwenhost.engine.kv_cache import common_prefix_len
from qwenhost.engine.sampling import GrammarSpec, SamplingParams
from qwenhost.engine.sequence import GenerationRequest, SeqState, StopMatcher

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def engine(small_model_path):
    eng = Engine(EngineConfig(model_path=small_model_path, ctx_size=4096, parallel=4, prefill_chunk=64))
    yield eng
    eng.close()


def chat_prompt(engine: Engine, user: str, system: str = "You are helpful.") -> list[int]:
    return engine.tokenize(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                           "<|im_start|>assistant\n")


async def run(engine: Engine, req: GenerationRequest) -> tuple[str, str, int, int]:
    text, n = [], 0
    async for out in engine.generate(req):
        text.append(out.text)
        n += out.n_tokens
        if out.finish_reason:
            return "".join(text), out.finish_reason, n, out.cached_tokens
    raise AssertionError("no finish")


def test_stop_matcher_holds_back_partial_stops():
    m = StopMatcher(["END", "##"])
    assert m.push("abc E") == ("abc ", False)
    assert m.push("N") == ("", False)
    assert m.push("x #") == ("ENx ", False)
    assert m.push("# tail") == ("", True)
    assert StopMatcher([]).push("free") == ("free", False)


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_len([], [1]) == 0


def test_batched_results_equal_solo_results(engine):
    """Greedy outputs must not depend on what else is in the batch (continuous batching is exact)."""
    users = ["Name a color.", "Name a fruit.", "Name an animal.", "Name a country.", "Name a planet."]

    def req(u: str) -> GenerationRequest:
        return GenerationRequest(chat_prompt(engine, u, "Be brief."), 12, GREEDY)

    async def together():
        return await asyncio.gather(*[run(engine, req(u)) for u in users])

    solo = [asyncio.run(run(engine, req(u)))[0] for u in users]
    both = [r[0] for r in asyncio.run(together())]
    assert all(solo) and both == solo


def test_prefix_is_reused_across_sequences(engine):
    system = "You answer questions about the solar system in one short sentence. " * 8
    first = asyncio.run(run(engine, GenerationRequest(chat_prompt(engine, "Biggest planet?", system), 8, GREEDY)))
    second = asyncio.run(run(engine, GenerationRequest(chat_prompt(engine, "Smallest planet?", system), 8, GREEDY)))
    n_system = len(engine.tokenize(f"<|im_start|>system\n{system}<|im_end|>\n"))
    assert first[3] < n_system <= second[3]


def test_max_tokens_and_ignore_eos(engine):
    text, reason, n, _ = asyncio.run(run(engine, GenerationRequest(
        chat_prompt(engine, "Say hi."), 40, GREEDY, ignore_eos=True)))
    assert reason == "length" and n == 40
    # End tokens are banned rather than generated past (as llama.cpp's ignore_eos does).
    assert "<|im_end|>" not in text and "<|endoftext|>" not in text, text


def test_thinking_budget_closes_reasoning(engine):
    prompt = engine.tokenize("<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n<think>\n")
    req = GenerationRequest(prompt, 120, GREEDY, thinking_open=True, thinking_budget=10)
    text, reason, n, _ = asyncio.run(run(engine, req))
    assert "</think>" in text
    head = text.split("</think>")[0]
    # 10 sampled reasoning tokens, then the forced early-stop sentence
    assert "Considering the limited time" in head
    assert len(engine.tokenize(head.split("Considering")[0])) <= 12


def test_grammar_constrains_output(engine):
    gbnf = 'root ::= "yes" | "no"'
    req = GenerationRequest(chat_prompt(engine, "Is water wet? Answer freely."), 10, GREEDY,
                            grammar=GrammarSpec(gbnf))
    text, reason, _, _ = asyncio.run(run(engine, req))
    assert text in ("yes", "no") and reason == "stop"


def test_bad_grammar_fails_the_request_not_the_engine(engine):
    req = GenerationRequest(chat_prompt(engine, "hi"), 5, GREEDY, grammar=GrammarSpec("root ::= ("))
    text, reason, _, _ = asyncio.run(run(engine, req))
    assert reason == "error"
    ok = asyncio.run(run(engine, GenerationRequest(chat_prompt(engine, "hi"), 5, GREEDY)))
    assert ok[1] in ("stop", "length")


def test_cancel_frees_the_slot(engine):
    async def cancel_midway():
        agen = engine.generate(GenerationRequest(chat_prompt(engine, "Tell a long story."), 500, GREEDY,
                                                 ignore_eos=True))
        async for out in agen:
            if out.n_tokens:
                break
        await agen.aclose()
        for _ in range(100):
            if not engine.scheduler.running:
                return True
            await asyncio.sleep(0.05)
        return False

    assert asyncio.run(cancel_midway())
    assert engine.scheduler.slots.active() == 0


def test_requests_arriving_together_compute_a_shared_system_prompt_once(engine):
    check_shared_prompt_computed_once(engine)


def check_shared_prompt_computed_once(engine: Engine) -> None:
    """Users with one long system prompt arrive at once: the first computes it, the others copy it as soon
    as it is in the cache (instead of each prefilling it again), and their answers are what they would be
    alone."""
    system = "You are the support assistant of Example Corp. " + " ".join(
        f"Rule {i}: answer politely, cite the manual section {i}, and never promise refunds." for i in range(20))
    users = ["How do I reset my password?", "Where is my order?", "Can I change my plan?", "Is there an app?"]
    reqs = [GenerationRequest(chat_prompt(engine, u, system), 8, GREEDY) for u in users]
    shared = common_prefix_len(reqs[0].prompt_tokens, reqs[1].prompt_tokens)
    assert shared > 200  # the test means something only with a long shared prefix
    computed_before = engine.metrics.prompt_tokens._value.get()

    async def together():
        return await asyncio.gather(*(run(engine, r) for r in reqs))

    outs = asyncio.run(together())
    computed = engine.metrics.prompt_tokens._value.get() - computed_before
    cached = sorted(o[3] for o in outs)
    # Exactly one of them computed the shared prefix; the others copied it.
    assert sum(1 for c in cached if c < shared - 8) == 1, cached
    assert computed < shared + sum(len(r.prompt_tokens) - shared for r in reqs) + 16, computed
    for r, o in zip(reqs, outs, strict=True):
        forget_idle(engine)  # else the solo run would reuse the very cells it is checking
        solo = asyncio.run(run(engine, r))
        assert solo[3] == 0 and o[0] == solo[0]


def forget_idle(engine: Engine) -> None:
    for s in engine.scheduler.slots.slots:
        if s.owner is None:
            engine.runner.seq_rm(s.index)
            s.tokens = []


def test_a_step_is_one_llama_decode_over_decode_tokens_and_prompt_chunks(engine, monkeypatch):
    """Decode tokens and a prompt chunk of any size go in one llama_decode per step (one pass over the weights),
    and every sequence's token comes from its own row's logits."""
    calls: list[tuple[int, bool, bool]] = []  # (tokens, has decode tokens, has prompt tokens)
    real_decode = engine.runner.decode

    def traced() -> int:
        b = engine.runner.batch
        slots = set(b.seq_id[: b.n].tolist())
        decoding = {s.slot for s in engine.scheduler.running if s.state == SeqState.DECODING}
        calls.append((b.n, bool(slots & decoding), bool(slots - decoding)))
        return real_decode()

    monkeypatch.setattr(engine.runner, "decode", traced)
    short = [GenerationRequest(chat_prompt(engine, u, "Be brief."), 24, GREEDY, ignore_eos=True)
             for u in ("Name a color.", "Name a fruit.", "Name a tree.")]
    doc = " ".join(f"Line {i}: the committee approved budget item {i} after a short discussion." for i in range(20))
    long = GenerationRequest(chat_prompt(engine, "Summarise: " + doc), 8, GREEDY, ignore_eos=True)
    assert len(long.prompt_tokens) > 4 * 64

    async def together():
        return await asyncio.gather(*(run(engine, r) for r in [*short, long]))

    steps = engine.metrics.step_seconds.labels("mixed")
    mixed_before = steps._sum.get()
    outs = asyncio.run(together())
    monkeypatch.setattr(engine.runner, "decode", real_decode)
    assert steps._sum.get() > mixed_before
    # the long prompt arrived with the short ones (one burst), so it goes in full chunks beside their decode tokens
    assert [c for c in calls if c[0] >= 64 and c[1] and c[2]], calls
    # llama.cpp's numerics depend a little on batch shape, so long greedy answers may part after a dozen
    # tokens; a token sampled from another row's logits would differ from the first word.
    for r, o in zip([*short, long], outs, strict=True):
        assert o[0][:12] == asyncio.run(run(engine, r))[0][:12]


def test_the_scheduler_thread_is_named_for_the_os(engine):
    """top -H and bench/thread_cpu.py tell the engine's compute from the server's own work by this name."""
    from pathlib import Path

    from qwenhost.engine.scheduler import ENGINE_THREAD_NAME

    names = [(t / "comm").read_text().strip() for t in Path("/proc/self/task").iterdir()]
    assert ENGINE_THREAD_NAME in names, names
