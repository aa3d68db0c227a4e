"""Scheduler policy against the fake executor: budget, chunking, priority, preemption, cache."""
from bench.fake_executor import FakeExecutor
from scheduler.request import FinishReason
from scheduler.scheduler import Scheduler, SchedulerConfig
from scheduler_builders import expected_tokens, make_request, make_scheduler


def step(scheduler, executor, collected=None):
    planned = scheduler.plan()
    outputs = scheduler.apply(planned, executor.step(planned.plan))
    for out in outputs if collected is not None else ():
        collected.setdefault(out.request_id, []).extend(out.token_ids)
    return planned.plan, outputs


def run_to_end(scheduler, executor, max_steps=500, outputs=None):
    outputs = {} if outputs is None else outputs
    for _ in range(max_steps):
        if not scheduler.has_work:
            break
        for out in step(scheduler, executor)[1]:
            outputs.setdefault(out.request_id, []).extend(out.token_ids)
    assert not scheduler.has_work
    return outputs


def test_prefill_is_chunked_by_the_budget_and_blocks_are_sent_as_diffs():
    scheduler, executor = make_scheduler()
    scheduler.add_request(make_request("a", range(1, 21), max_tokens=2))
    plan, outputs = step(scheduler, executor)
    (new,) = plan.new_requests
    assert (list(new.block_ids), new.num_computed_tokens, new.num_scheduled_tokens) == ([0, 1], 0, 8)
    assert plan.num_scheduled_tokens == 8 and outputs == []
    plan, _ = step(scheduler, executor)
    (diff,) = plan.running
    assert (list(diff.new_block_ids), diff.num_computed_tokens, diff.num_scheduled_tokens) == ([2, 3], 8, 8)
    plan, outputs = step(scheduler, executor)
    assert (list(plan.running[0].new_block_ids), plan.running[0].num_scheduled_tokens) == ([4], 4)
    assert outputs[0].token_ids == expected_tokens(range(1, 21), 1)
    plan, outputs = step(scheduler, executor)   # decode: token 21 goes into block 5
    assert (list(plan.running[0].new_block_ids), plan.running[0].num_scheduled_tokens) == ([5], 1)
    assert outputs[0].finish_reason is FinishReason.LENGTH
    assert outputs[0].usage == (20, 2, 0)
    assert scheduler.pool.num_free_blocks == 64 and scheduler.pool.check_integrity()
    plan = scheduler.plan().plan   # the finished id reaches the executor with the next plan
    assert list(plan.finished_request_ids) == ["a"]


def test_running_requests_get_the_budget_before_admissions():
    scheduler, executor = make_scheduler()
    scheduler.add_request(make_request("a", range(1, 5), max_tokens=10))
    step(scheduler, executor)                    # a: prompt of 4, sampled one
    scheduler.add_request(make_request("b", range(1, 31)))
    plan, _ = step(scheduler, executor)
    assert [r.request_id for r in plan.running] == ["a"] and plan.running[0].num_scheduled_tokens == 1
    assert plan.new_requests[0].request_id == "b" and plan.new_requests[0].num_scheduled_tokens == 7
    assert plan.num_scheduled_tokens == 8


def test_max_num_seqs_limits_the_batch():
    scheduler, executor = make_scheduler(max_num_seqs=2, max_num_batched_tokens=100)
    for name in "abc":
        scheduler.add_request(make_request(name, range(1, 4)))
    plan, _ = step(scheduler, executor)
    assert [r.request_id for r in plan.new_requests] == ["a", "b"]
    assert scheduler.num_waiting == 1
    outputs = run_to_end(scheduler, executor)
    assert outputs["c"] == expected_tokens(range(1, 4), 4)


def test_higher_priority_is_admitted_first_then_fcfs():
    scheduler, executor = make_scheduler(max_num_seqs=1, max_num_batched_tokens=100)
    scheduler.add_request(make_request("low-old", range(1, 4), max_tokens=1))
    scheduler.add_request(make_request("high", range(1, 4), max_tokens=1, priority=5))
    scheduler.add_request(make_request("low-new", range(1, 4), max_tokens=1))
    order = []
    while scheduler.has_work:
        plan, _ = step(scheduler, executor)
        order += [r.request_id for r in plan.new_requests]
    assert order == ["high", "low-old", "low-new"]


def test_preemption_picks_lowest_priority_then_newest_and_recomputes_exactly():
    # 6 blocks of 4 tokens; three requests of 8-token prompts that each grow to 16 tokens.
    scheduler, executor = make_scheduler(num_blocks=6, max_num_batched_tokens=64)
    prompts = {"old": range(1, 9), "new": range(11, 19), "vip": range(21, 29)}
    scheduler.add_request(make_request("old", prompts["old"], max_tokens=8))
    scheduler.add_request(make_request("new", prompts["new"], max_tokens=8))
    scheduler.add_request(make_request("vip", prompts["vip"], max_tokens=8, priority=1))
    collected = {}
    plan, _ = step(scheduler, executor, collected)
    assert [r.request_id for r in plan.new_requests] == ["vip", "old", "new"]
    plan, _ = step(scheduler, executor, collected)   # each needs a 3rd block: only "new" must go
    assert list(plan.finished_request_ids) == ["new"]
    assert [r.request_id for r in plan.running] == ["vip", "old"]
    assert scheduler.counters.num_preemptions == 1
    outputs = run_to_end(scheduler, executor, outputs=collected)
    resent = [r for p in executor.plans for r in p.new_requests if r.request_id == "new"]
    assert len(resent) >= 2 and list(resent[-1].output_token_ids)   # came back with its output
    for name, prompt in prompts.items():
        assert outputs[name] == expected_tokens(prompt, 8), name
    assert scheduler.pool.num_free_blocks == 6 and scheduler.pool.check_integrity()


def test_a_lone_request_that_outgrows_others_preempts_itself_last():
    scheduler, executor = make_scheduler(num_blocks=4, max_num_batched_tokens=64)
    scheduler.add_request(make_request("a", range(1, 9), max_tokens=8))
    scheduler.add_request(make_request("b", range(1, 5), max_tokens=4))
    outputs = run_to_end(scheduler, executor)
    assert outputs["a"] == expected_tokens(range(1, 9), 8)
    assert outputs["b"] == expected_tokens(range(1, 5), 4)


def test_prefix_hit_reuses_full_blocks_but_computes_the_last_token():
    scheduler, executor = make_scheduler(max_num_batched_tokens=64)
    scheduler.add_request(make_request("first", range(1, 13), max_tokens=1))
    run_to_end(scheduler, executor)
    first_blocks = list(executor.plans[0].new_requests[0].block_ids)
    scheduler.add_request(make_request("same", range(1, 13), max_tokens=2))
    collected = {}
    plan, _ = step(scheduler, executor, collected)
    (new,) = plan.new_requests
    # 12 tokens = 3 full blocks, but the last token must be computed: 2 blocks hit.
    assert list(new.block_ids[:2]) == first_blocks[:2]
    assert (new.num_computed_tokens, new.num_scheduled_tokens) == (8, 4)
    outputs = run_to_end(scheduler, executor, outputs=collected)
    assert outputs["same"] == expected_tokens(range(1, 13), 2)
    scheduler.add_request(make_request("salted", range(1, 13), max_tokens=1, salt="other"))
    plan, outputs = step(scheduler, executor)
    assert plan.new_requests[0].num_computed_tokens == 0
    assert outputs[0].usage.num_cached_tokens == 0
    assert scheduler.counters.prefix_cache_hit_tokens == 8


def test_without_prefix_caching_every_prompt_token_is_computed():
    config = SchedulerConfig(4, 16, 64, 8, 256, enable_prefix_caching=False)
    scheduler, executor = Scheduler(config), FakeExecutor(vocab_size=512, block_size=4, num_blocks=16)
    outputs = {}
    for name in ("first", "same"):
        scheduler.add_request(make_request(name, range(1, 13), max_tokens=2))
        plan, _ = step(scheduler, executor, outputs)
        assert (plan.new_requests[0].num_computed_tokens, plan.new_requests[0].num_scheduled_tokens) == (0, 12)
        run_to_end(scheduler, executor, outputs=outputs)
    assert outputs["same"] == outputs["first"] == expected_tokens(range(1, 13), 2)
    assert scheduler.counters.prefix_cache_hit_tokens == 0 and scheduler.pool.num_cached_blocks == 0
    assert scheduler.pool.num_free_blocks == 16 and scheduler.pool.check_integrity()


def test_abort_frees_blocks_and_tells_the_executor():
    scheduler, executor = make_scheduler()
    scheduler.add_request(make_request("a", range(1, 21)))
    scheduler.add_request(make_request("w", range(1, 21)))
    step(scheduler, executor)
    assert scheduler.abort_request("a").finish_reason is FinishReason.ABORT
    assert scheduler.abort_request("w").finish_reason is FinishReason.ABORT
    assert scheduler.abort_request("a") is None
    assert scheduler.pool.num_free_blocks == 64 and not scheduler.has_work
    assert scheduler.num_waiting == 0
    plan = scheduler.plan().plan
    assert list(plan.finished_request_ids) == ["a"] and plan.num_scheduled_tokens == 0


def test_stop_token_eos_and_min_tokens():
    prompt = list(range(1, 5))
    tokens = expected_tokens(prompt, 6)
    scheduler, executor = make_scheduler(eos={tokens[1]})
    scheduler.add_request(make_request("eos", prompt, max_tokens=6))
    scheduler.add_request(make_request("ignore", prompt, max_tokens=6, is_eos_ignored=True))
    scheduler.add_request(make_request("min", prompt, max_tokens=6, min_tokens=3))
    scheduler.add_request(make_request("stop-id", prompt, max_tokens=6,
                                       stop_token_ids=frozenset({tokens[3]})))
    outputs = run_to_end(scheduler, executor)
    assert outputs["eos"] == tokens[:2]
    assert outputs["ignore"] == tokens
    assert outputs["min"] == tokens   # EOS came before min_tokens
    assert outputs["stop-id"] == tokens[:2]   # EOS at 2 still applies


def test_model_length_stops_a_request():
    scheduler, executor = make_scheduler(max_model_len=10)
    scheduler.add_request(make_request("a", range(1, 9), max_tokens=16))
    outputs = run_to_end(scheduler, executor)
    assert len(outputs["a"]) == 2
