"""Runner unit tests: whole-plan validation (nothing changes on error), state, KV pool pages."""
import numpy as np
import pytest
import torch

from bench.step_plans import make_plan, new_request, running
from executor.settings import RunnerSettings, build_runner
from executor.errors import PlanError
from protos.v1 import executor_pb2


@pytest.fixture
def runner(llama_dir):
    return build_runner(RunnerSettings(llama_dir, dtype="float32", num_device_blocks=16, block_size=4, max_num_seqs=3,
                                       max_num_batched_tokens=32))


def test_invalid_plan_changes_no_state(runner):
    runner.step(make_plan(1, [new_request("a", [1, 2, 3], [0])]))
    bad = make_plan(2, [new_request("b", [4, 5], [1])], [running("a", 3, 1)], finished=["a"])
    with pytest.raises(PlanError, match="'a' is unknown"):
        runner.step(bad)
    assert list(runner.requests) == ["a"] and runner.requests["a"].num_computed_tokens == 3
    assert runner.requests["a"].block_ids == [0]
    out = runner.step(make_plan(3, [new_request("b", [4, 5], [1])], [running("a", 3, 1)]))
    assert sorted(s.request_id for s in out.result.sampled) == ["a", "b"]
    assert runner.requests["a"].num_computed_tokens == 4 and len(runner.requests["a"].token_ids) == 5


@pytest.mark.parametrize("plan, message", [
    (make_plan(2, [new_request("a", [1], [2])]), "already held"),
    (make_plan(2, [new_request("x", [1], [2]), new_request("x", [1], [3])]), "twice"),
    (make_plan(2, run=[running("a", 2, 1)]), "plan says 2 computed tokens, the executor has 3"),
    (make_plan(2, run=[running("a", 3, 2)]), "exceed the 4 known tokens"),
    (make_plan(2, [new_request("x", [1] * 9, [2, 3])]), "2 blocks hold 8 tokens, 9 needed"),
    (make_plan(2, [new_request("x", [1] * 40, list(range(1, 11)))]), "max_num_batched_tokens 32"),
    (make_plan(2, [new_request(f"x{i}", [1], [i + 1]) for i in range(4)]), "4 requests, more than max_num_seqs 3"),
    (make_plan(2, [new_request("x", [1], [2], temperature=-1.0)]), "temperature must be >= 0"),
    (make_plan(2, [new_request("x", [1], [2], logprobs=21)]), "logprobs must be at most 20"),
])
def test_each_bad_plan_is_rejected_with_a_reason(runner, plan, message):
    runner.step(make_plan(1, [new_request("a", [1, 2, 3], [0])]))
    with pytest.raises(PlanError, match=message):
        runner.step(plan)


def test_finishing_an_unknown_request_is_a_no_op(runner):
    out = runner.step(make_plan(1, [new_request("a", [1, 2], [0])], finished=["never-seen"]))
    assert [s.request_id for s in out.result.sampled] == ["a"]


def test_chunked_prefill_samples_only_at_the_end(runner):
    prompt = [9, 8, 7, 6, 5, 4]
    out = runner.step(make_plan(1, [new_request("a", prompt, [3, 4], num_scheduled_tokens=4)]))
    assert list(out.result.sampled) == [] and out.logits is None
    out = runner.step(make_plan(2, run=[running("a", 4, 2)]))
    assert [s.request_id for s in out.result.sampled] == ["a"]
    whole = build_runner(RunnerSettings(runner.loaded.path, dtype="float32", num_device_blocks=4, block_size=4))
    assert whole.step(make_plan(1, [new_request("a", prompt, [0, 1])])).result.sampled[0].token_id == \
        out.result.sampled[0].token_id


def test_zero_token_request_holds_its_place(runner):
    out = runner.step(make_plan(1, [new_request("a", [1, 2], [0], num_scheduled_tokens=0)]))
    assert list(out.result.sampled) == [] and runner.requests["a"].num_computed_tokens == 0


def test_logprobs_travel_in_the_result(runner):
    out = runner.step(make_plan(1, [new_request("a", [1, 2], [0], logprobs=3)]))
    sampled = out.result.sampled[0]
    assert sampled.HasField("logprobs") and len(sampled.logprobs.top_token_ids) == 3
    raw = torch.log_softmax(out.logits[0], dim=-1)
    assert sampled.logprobs.logprob == pytest.approx(raw[sampled.token_id].item(), rel=1e-6)


def test_reset_forgets_every_request(runner):
    runner.step(make_plan(1, [new_request("a", [1, 2], [0])]))
    runner.reset()
    with pytest.raises(PlanError, match="unknown"):
        runner.step(make_plan(2, run=[running("a", 2, 1)]))


def test_page_round_trips_bytes_exactly_through_a_host_buffer(runner):
    pool = runner.pool
    pool.tensor.copy_(torch.randn(pool.tensor.shape))
    host = np.zeros((4, pool.page_bytes), np.uint8)  # a plain host buffer of 4 page slots
    expected = pool.tensor[5].clone()
    pool.copy_page_out(5, torch.from_numpy(host[2]))
    assert host[2].tobytes() == expected.numpy().tobytes()
    pool.copy_page_in(torch.from_numpy(host[2]), 11)
    assert torch.equal(pool.tensor[11], expected) and pool.tensor[11].data_ptr() != expected.data_ptr()


def test_unmapped_arena_is_rejected(runner):
    plan = executor_pb2.StepPlan(step_id=1, stores=[executor_pb2.PageMove(block_id=0, slot=3, arena_id="ram0")])
    with pytest.raises(PlanError, match="no host arena mapped with id 'ram0'"):
        runner.step(plan)


@pytest.mark.parametrize("kv_cache_dtype", ["float16", "bfloat16"])
def test_16_bit_kv_cache_halves_the_page_and_stays_close_to_fp32(llama_dir, kv_cache_dtype):
    def decode_logits(settings: RunnerSettings) -> tuple[torch.Tensor, object]:
        runner = build_runner(settings)
        prompt = [5, 9, 2, 7, 7, 1, 3, 8, 4, 6]
        out = runner.step(make_plan(1, [new_request("a", prompt, [0, 1, 2, 3])]))
        logits = [out.logits]
        for step in range(2, 6):   # decodes read the cached K/V back (the native kernel here)
            logits.append(runner.step(make_plan(step, run=[running("a", len(prompt) + step - 2, 1)])).logits)
        return torch.cat(logits), runner.pool

    fp32, fp32_pool = decode_logits(RunnerSettings(llama_dir, dtype="float32", num_device_blocks=4, block_size=4))
    half, half_pool = decode_logits(RunnerSettings(llama_dir, dtype="float32", num_device_blocks=4, block_size=4,
                                                   kv_cache_dtype=kv_cache_dtype))
    assert half_pool.dtype == getattr(torch, kv_cache_dtype) and fp32_pool.dtype == torch.float32
    assert half_pool.page_bytes * 2 == fp32_pool.page_bytes
    assert not torch.equal(half, fp32)   # K/V were rounded ...
    torch.testing.assert_close(half, fp32, atol=0.05, rtol=0)   # ... and attention still agrees


def test_unknown_kv_cache_dtype_is_rejected_with_the_choices(llama_dir):
    with pytest.raises(ValueError, match="--kv-cache-dtype 'int8': choose auto, float32, bfloat16, float16"):
        build_runner(RunnerSettings(llama_dir, dtype="float32", num_device_blocks=4, kv_cache_dtype="int8"))


def test_kv_cache_memory_sizes_the_pool_in_whole_pages(llama_dir):
    from executor.daemon import build_parser

    args = build_parser().parse_args(["--kv-cache-memory", "1MiB"])
    runner = build_runner(RunnerSettings(llama_dir, dtype="float32", block_size=4, kv_cache_bytes=args.kv_cache_bytes))
    assert runner.pool.num_blocks == (1 << 20) // runner.pool.page_bytes
    assert build_parser().parse_args(["--kv-cache-bytes", "2KiB"]).kv_cache_bytes == 2048   # the older name
