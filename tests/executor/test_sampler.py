"""Sampler semantics on hand-made logits, and seeded determinism through the runner."""
import math

import pytest
import torch

from bench.step_plans import SimpleDriver
from executor.settings import RunnerSettings, build_runner
from executor.sampler import RowContext, sample
from executor.sampling_params import Sampling


def row(prompt=(), output=(), **params):
    return RowContext(Sampling(**params), list(prompt) + list(output), len(prompt))


def test_greedy_takes_argmax_and_leaves_logits_untouched():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 0.0, 0.0, 0.0]])
    before = logits.clone()
    assert sample(logits, [row(temperature=0.0), row(temperature=0.0)]).token_ids == [1, 0]
    assert torch.equal(logits, before)


def test_greedy_tie_takes_the_first_maximum_as_transformers_argmax_does():
    logits = torch.zeros(2, 32000)
    logits[0, [9000, 5]] = 2.0
    logits[1, [31999, 7, 20000]] = 1.0
    assert sample(logits, [row(temperature=0.0)] * 2).token_ids == [5, 7]


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    # token 1 (3.0, seen) -> 1.5 < token 2 (2.0); token 3 (-1.0, seen) -> -2.0 stays below.
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0]])
    assert sample(logits, [row(prompt=[1], output=[3], temperature=0.0, repetition_penalty=2.0)]).token_ids == [2]


def test_presence_and_frequency_penalties_count_output_only():
    logits = torch.tensor([[0.0, 3.0, 2.5, 0.0]])
    # token 1 twice in the output: 3.0 - 2*0.3 - 0.1 = 2.3 < 2.5.
    picked = sample(logits, [row(prompt=[2, 2, 2], output=[1, 1], temperature=0.0,
                                 frequency_penalty=0.3, presence_penalty=0.1)]).token_ids
    assert picked == [2]


def test_top_k_top_p_min_p_restrict_the_draw():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    cases = [({"top_k": 1}, {0}), ({"top_p": 0.5}, {0}), ({"top_p": 0.8}, {0, 1}), ({"min_p": 0.5}, {0, 1}),
             ({"top_k": 3}, {0, 1, 2})]
    for params, allowed in cases:
        drawn = {sample(logits, [row(seed=s, **params)]).token_ids[0] for s in range(60)}
        assert drawn == allowed, params


def test_draw_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    counts = torch.bincount(torch.tensor([sample(logits, [row(seed=s)]).token_ids[0] for s in range(600)]),
                            minlength=3)
    assert abs(counts[0].item() / 600 - 0.7) < 0.07 and abs(counts[2].item() / 600 - 0.1) < 0.05


def test_logprobs_are_the_raw_distribution():
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    out = sample(logits, [row(temperature=0.0, repetition_penalty=5.0, prompt=[2], num_logprobs=2)])
    raw = torch.log_softmax(logits[0], dim=-1)
    assert out.token_ids == [1]
    assert math.isclose(out.logprobs[0].logprob, raw[1].item(), rel_tol=1e-6)
    assert out.logprobs[0].top_token_ids == [2, 1]
    assert out.logprobs[0].top_logprobs == pytest.approx([raw[2].item(), raw[1].item()])
    assert sample(logits, [row(temperature=0.0)]).logprobs == [None]


def test_seeded_request_is_the_same_alone_and_in_a_batch_of_16(llama_dir):
    def run(num_others: int) -> list[int]:
        runner = build_runner(RunnerSettings(llama_dir, dtype="float32", num_device_blocks=256, block_size=4))
        driver = SimpleDriver(4)
        for i in range(num_others // 2):
            driver.add(f"other{i}", [7 + i, 8, 9 + i], temperature=0.9, top_p=0.9, seed=100 + i)
        driver.add("seeded", [11, 12, 13, 14, 15], temperature=0.8, top_k=50, seed=42, presence_penalty=0.5)
        for i in range(num_others - num_others // 2):
            driver.add(f"rand{i}", [20 + i] * (i + 1), temperature=1.3, min_p=0.05, repetition_penalty=1.2)
        for _ in range(16):
            driver.apply(runner.step(driver.plan()).result)
        return driver.outputs["seeded"]

    alone = run(0)
    assert alone == run(15)
    assert len(set(alone)) > 4  # a real sampled stream, not a constant


def test_seed_depends_on_output_position_so_readmission_continues_the_stream(llama_dir):
    from bench.step_plans import make_plan, new_request

    runner = build_runner(RunnerSettings(llama_dir, dtype="float32", num_device_blocks=64, block_size=4))
    driver = SimpleDriver(4)
    driver.add("s", [1, 2, 3], temperature=1.0, seed=7)
    for _ in range(6):
        driver.apply(runner.step(driver.plan()).result)
    full = driver.outputs["s"]
    # Re-admit after 3 outputs (as after a preemption): the next tokens equal the uninterrupted run.
    fresh = build_runner(RunnerSettings(llama_dir, dtype="float32", num_device_blocks=64, block_size=4))
    plan = make_plan(1, [new_request("s", [1, 2, 3], [0, 1], output=full[:3], temperature=1.0, seed=7)])
    assert fresh.step(plan).result.sampled[0].token_id == full[3]
