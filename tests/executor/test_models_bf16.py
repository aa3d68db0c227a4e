"""bf16 parity with transformers in bf16 through the runner: logits within a stated tolerance,
greedy tokens equal up to a near-tie.

Both sides round to bf16 at different points (transformers' SDPA and matmuls in bf16, ours: the
same projections, attention in fp32 over bf16 K/V, fused norms that round where torch stores), so
logits differ by a few bf16 steps, and a greedy stream may flip where two logits are that close.
"""
import pytest
import torch
from checkpoints import load_hf_model

from bench.step_plans import SimpleDriver, make_plan, new_request
from executor.settings import RunnerSettings, build_runner

BLOCK_SIZE = 4
ARCH_FIXTURES = ["llama_dir", "mistral_dir", "qwen2_dir", "qwen3_dir"]
# Largest logit difference allowed, as a fraction of the largest |logit| (measured on the tiny
# random checkpoints: 0.5-1.5%; fp32 parity is held to 1e-4).
LOGITS_TOLERANCE = 0.03
# Two logits closer than this fraction of the largest |logit| are a near-tie: either is greedy.
NEAR_TIE = 0.03
NUM_GREEDY_TOKENS = 32


def tokens(seed: int, n: int, vocab: int = 512) -> list[int]:
    return torch.randint(1, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def hf_bf16(model_dir):
    return load_hf_model(model_dir).to(torch.bfloat16)


def hf_logits(hf, token_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([token_ids])).logits[0, -1].float()


def bf16_runner(model_dir):
    runner = build_runner(RunnerSettings(model_dir, dtype="bfloat16", num_device_blocks=128, block_size=BLOCK_SIZE))
    assert runner.loaded.dtype == torch.bfloat16 and runner.pool.tensor.dtype == torch.bfloat16
    return runner


@pytest.mark.parametrize("fixture", ARCH_FIXTURES)
def test_bf16_prefill_and_decode_logits_are_close_to_transformers_bf16(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    runner, hf = bf16_runner(model_dir), hf_bf16(model_dir)
    prompts = {"a": tokens(1, 9), "b": tokens(2, 17), "c": tokens(3, 4)}
    first = [new_request(rid, p, list(range(8 * i, 8 * i + 8))) for i, (rid, p) in enumerate(prompts.items())]
    out = runner.step(make_plan(1, first))
    for row, rid in enumerate(out.sampled_request_ids):
        expected = hf_logits(hf, prompts[rid])
        error = (out.logits[row] - expected).abs().max().item()
        assert error <= LOGITS_TOLERANCE * expected.abs().max().item(), (rid, error)


@pytest.mark.parametrize("fixture", ARCH_FIXTURES)
def test_bf16_greedy_tokens_match_generate_up_to_a_near_tie(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    runner, hf = bf16_runner(model_dir), hf_bf16(model_dir)
    prompt = tokens(4, 11)
    driver = SimpleDriver(BLOCK_SIZE)
    driver.add("x", prompt)
    for _ in range(NUM_GREEDY_TOKENS):
        driver.apply(runner.step(driver.plan()).result)
    ours = driver.outputs["x"]
    expected = hf.generate(torch.tensor([prompt]), max_new_tokens=NUM_GREEDY_TOKENS,
                           min_new_tokens=NUM_GREEDY_TOKENS, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[0, len(prompt):].tolist()
    divergence = next((i for i, (a, b) in enumerate(zip(ours, expected)) if a != b), None)
    if divergence is None:
        assert ours == expected
        return
    # Where the streams part, transformers' own logits must rate both tokens nearly equal.
    logits = hf_logits(hf, prompt + expected[:divergence])
    gap = (logits[expected[divergence]] - logits[ours[divergence]]).item()
    assert 0 <= gap <= NEAR_TIE * logits.abs().max().item(), (divergence, gap)


def test_bf16_projections_use_the_prepacked_onednn_weights_and_equal_f_linear(llama_dir):
    from executor.models.transformer import onednn_reorder

    if onednn_reorder() is None:
        pytest.skip("this torch has no oneDNN linear")
    model = bf16_runner(llama_dir).loaded.model
    layer = model.weights.layers[0]
    assert layer.gate_up.data_ptr() in model.onednn_packed and model.weights.lm_head.data_ptr() in model.onednn_packed
    generator = torch.Generator().manual_seed(5)
    for num_rows in (1, 3, 17, 70, 130):   # past ONEDNN_EXACT_ROWS: rows padded to a multiple of 16
        x = torch.randn(num_rows, 2 * layer.gate_up.shape[1], generator=generator).bfloat16()[:, ::2]  # strided
        out = model._linear(x, layer.gate_up)
        assert out.shape == (num_rows, layer.gate_up.shape[0]) and out.is_contiguous()
        torch.testing.assert_close(out, torch.nn.functional.linear(x, layer.gate_up))


def test_fp32_projections_use_the_prepacked_onednn_weights_and_equal_f_linear(llama_dir):
    from executor.models.transformer import onednn_reorder

    if onednn_reorder(torch.float32) is None:
        pytest.skip("this torch has no oneDNN linear")
    model = build_runner(RunnerSettings(llama_dir, dtype="float32", num_device_blocks=16,
                                        block_size=BLOCK_SIZE)).loaded.model
    layer = model.weights.layers[0]
    assert layer.down.data_ptr() in model.onednn_packed and model.weights.lm_head.data_ptr() in model.onednn_packed
    assert model.packed == {} and not model.is_small_linear   # MKL's packing is the fallback only
    generator = torch.Generator().manual_seed(6)
    for num_rows in (1, 3, 17, 70, 130):
        x = torch.randn(num_rows, 2 * layer.down.shape[1], generator=generator)[:, ::2]  # strided
        torch.testing.assert_close(model._linear(x, layer.down), torch.nn.functional.linear(x, layer.down),
                                   rtol=1e-5, atol=1e-5)
