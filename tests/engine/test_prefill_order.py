"""Which prompt the scheduler computes first: shortest remaining first, with aging so none starves."""

from __future__ import annotations

from qwenhost.engine.scheduler import prefill_order
from qwenhost.engine.sequence import GenerationRequest, Sequence


def seq(n_prompt: int, created: float) -> Sequence:
    s = Sequence(GenerationRequest(prompt_tokens=list(range(n_prompt)), max_tokens=4), lambda _out: None)
    s.created = created
    return s


def test_short_prompts_go_first() -> None:
    long_doc, short, mid = seq(3000, 100.0), seq(120, 100.0), seq(600, 100.0)
    assert prefill_order([long_doc, short, mid], now=100.0, sec_per_token=1 / 60) == [short, mid, long_doc]


def test_remaining_not_total_counts() -> None:
    a, b = seq(1000, 0.0), seq(300, 0.0)
    a.n_past = 900  # 100 left
    assert prefill_order([b, a], now=0.0, sec_per_token=1 / 60) == [a, b]


def test_a_long_wait_overtakes_short_newcomers() -> None:
    # 3000 tokens at 60 tok/s is 50 s of work; after waiting 40 s it still yields to a fresh 120-token prompt
    # (2 s of work), after 60 s it goes first.
    doc = seq(3000, 0.0)
    fresh = seq(120, 40.0)
    assert prefill_order([doc, fresh], now=40.0, sec_per_token=1 / 60) == [fresh, doc]
    fresh.created = 60.0
    assert prefill_order([doc, fresh], now=60.0, sec_per_token=1 / 60) == [doc, fresh]


def test_ties_keep_arrival_order() -> None:
    first, second = seq(200, 5.0), seq(200, 5.0)
    assert prefill_order([second, first], now=5.0, sec_per_token=None) == [first, second]


def test_prefill_budget_keeps_steps_within_a_multiple_of_a_decode_step() -> None:
    from qwenhost.engine.scheduler import PREFILL_FLOOR, SchedulerConfig, StepCosts

    costs, cfg = StepCosts(), SchedulerConfig(prefill_chunk=512, itl_target_ratio=2.8)
    assert costs.prefill_budget(0, cfg) == 512  # nobody decoding: full chunks
    costs.learn(0.30, 100, 92)  # a first mixed step: nothing known about pure decode yet
    assert costs.prefill_budget(8, cfg) == int(1.0 / 0.003) - 8  # 1 s against the average token
    costs.learn(0.14, 8, 0)  # decode-only steps of 8 streams take 0.14 s
    costs.learn(0.14 + 20 * 0.011, 28, 20)  # 20 prompt tokens add 11 ms each
    assert costs.decode_step_s == 0.14
    assert abs(costs.sec_per_prompt_token - 0.011) < 1e-9
    # 2.8 x 0.14 s = 0.392 s a step: 0.252 s of prompt at 11 ms a token = 22 tokens.
    assert costs.prefill_budget(8, cfg) == 22
    assert costs.prefill_budget(8, SchedulerConfig(itl_target_s=0.58)) == 40  # seconds: (0.58-0.14)/0.011
    assert costs.prefill_budget(8, SchedulerConfig(itl_target_ratio=1.01)) == PREFILL_FLOOR
