"""The scheduler's Prometheus metrics in-process (fake executor, fake kvstore link): exact counter
and histogram-count values after known events, parsed as a Prometheus server would."""
import functools
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tokenizers import Tokenizer

from bench.fake_executor import FakeExecutor
from fake_kvstore_link import FakeKVStoreLink
from protos.v1 import generation_pb2
from protos.v1 import kvstore_pb2 as pb
from scheduler.block_hash import extend_keys
from scheduler.engine import Engine
from scheduler.offload import KVStoreTiers, OffloadConfig
from scheduler.scheduler import Scheduler, SchedulerConfig
from scheduler_builders import expected_tokens, make_request, make_scheduler

BLOCK = 4
PAGE_BYTES = 4096
PROMPT = list(range(1, 14))    # 13 tokens: 3 full blocks reusable (the last token is computed)


def samples(text: str) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value, through prometheus_client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def engine(tokenizer_dir):
    scheduler, executor = make_scheduler(num_blocks=64, max_num_batched_tokens=64)

    def step(plan):
        time.sleep(0.002)   # a step takes time: latencies are > 0
        return executor.step(plan)

    running = Engine(scheduler, step, Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")),
                     max_waiting=16)
    running.start()
    yield running
    running.shutdown()


def drain(stream):
    return list(stream.responses(lambda: True))


def test_three_requests_count_their_tokens_latencies_and_finish_reasons(engine):
    prompts = [list(range(start, start + 9)) for start in (1, 101, 201)]
    streams = [engine.submit(make_request(f"r{i}", p, max_tokens=5)) for i, p in enumerate(prompts)]
    streamed = [[t for r in drain(s) for t in r.token_ids] for s in streams]
    assert streamed == [expected_tokens(p, 5) for p in prompts]
    text = engine.metrics_text()
    assert value(text, "strata:generation_tokens_total") == 15
    assert value(text, "strata:prompt_tokens_total") == 27
    assert value(text, "strata:request_success_total", finished_reason="length") == 3
    assert value(text, "strata:request_success_total", finished_reason="stop") == 0
    assert value(text, "strata:request_success_total", finished_reason="abort") == 0
    assert value(text, "strata:time_to_first_token_seconds_count") == 3
    assert value(text, "strata:inter_token_latency_seconds_count") == 12   # 4 gaps each
    assert value(text, "strata:e2e_request_latency_seconds_count") == 3
    assert value(text, "strata:request_queue_time_seconds_count") == 3
    assert 0 < value(text, "strata:time_to_first_token_seconds_sum") \
        < value(text, "strata:e2e_request_latency_seconds_sum")
    assert value(text, "strata:prefix_cache_queries_total") == 27
    assert value(text, "strata:prefix_cache_hits_total") == 0
    assert value(text, "strata:cached_tokens_total", tier="device") == 0
    for gauge in ("running", "waiting", "loading"):
        assert value(text, f"strata:num_requests_{gauge}") == 0
    assert value(text, "strata:kv_cache_usage_perc") == 0.0   # finished: blocks cached, unused
    assert "strata:kvstore_up" not in text   # no kvstore: no kvstore part


def test_a_repeated_prompt_is_a_device_prefix_hit(engine):
    prompt = list(range(1, 10))   # 9 tokens: 2 full blocks of 4 reusable
    drain(engine.submit(make_request("first", prompt, max_tokens=3)))
    drain(engine.submit(make_request("again", prompt, max_tokens=3)))
    text = engine.metrics_text()
    assert value(text, "strata:prefix_cache_queries_total") == 18
    assert value(text, "strata:prefix_cache_hits_total") == 8
    assert value(text, "strata:cached_tokens_total", tier="device") == 8
    assert value(text, "strata:cached_tokens_total", tier="ram") == 0


def test_gauges_while_a_request_runs_and_an_abort_is_counted_as_abort(engine):
    request = make_request("long", range(1, 10), max_tokens=200)
    responses = engine.submit(request).responses(lambda: True)
    assert next(responses).token_ids
    text = engine.metrics_text()
    assert value(text, "strata:num_requests_running") == 1
    assert 0 < value(text, "strata:kv_cache_usage_perc") <= 4 / 64   # 3-4 of 64 blocks in use
    engine.abort(request)
    assert list(responses)[-1].finish_reason == generation_pb2.FINISH_REASON_ABORT
    text = engine.metrics_text()
    assert value(text, "strata:request_success_total", finished_reason="abort") == 1
    assert value(text, "strata:e2e_request_latency_seconds_count") == 1
    assert value(text, "strata:time_to_first_token_seconds_count") == 1


def test_a_stop_string_counts_as_stop_though_the_engine_aborts_it(engine):
    stop = "None Dec"   # what the fake executor's tokens spell after this prompt (see the engine tests)
    request = make_request("stops", range(1, 10), max_tokens=40, stop=(stop,))
    responses = drain(engine.submit(request))
    assert responses[-1].finish_reason == generation_pb2.FINISH_REASON_STOP
    text = engine.metrics_text()
    assert value(text, "strata:request_success_total", finished_reason="stop") == 1
    assert value(text, "strata:request_success_total", finished_reason="abort") == 0


@pytest.fixture
def offloading():
    """A scheduler whose host tiers are a fake kvstore link (no gRPC), and its fake executor."""
    link = FakeKVStoreLink()
    config = SchedulerConfig(BLOCK, 16, max_num_batched_tokens=64, max_num_seqs=8, max_model_len=256)
    scheduler = Scheduler(config, functools.partial(
        KVStoreTiers, link=link, block_size=BLOCK, page_bytes=PAGE_BYTES,
        map_arena=lambda layout: True,
        config=OffloadConfig(num_prefetch_requests=0, is_always_load=True)))
    yield scheduler, FakeExecutor(vocab_size=512, block_size=BLOCK, num_blocks=16), link
    scheduler.tiers.close()


def run_step(scheduler, executor, done=()):
    step = scheduler.plan()
    result = executor.step(step.plan)
    result.done_moves.extend(done)
    scheduler.apply(step, result)


def test_a_ram_load_counts_its_pages_bytes_and_latency_under_the_ram_tier(offloading):
    scheduler, executor, link = offloading
    request = make_request("a", PROMPT, max_tokens=1)
    keys = []
    extend_keys(keys, request.namespace, request.token_ids, BLOCK, 3)
    link.put(keys, pb.TIER_RAM)
    scheduler.add_request(request)
    run_step(scheduler, executor, done=[1, 2, 3])   # a blocking load of 3 pages, then it finishes
    text = scheduler.metrics.text()
    assert value(text, "strata:cached_tokens_total", tier="ram") == 12
    assert value(text, "strata:cached_tokens_total", tier="device") == 0
    assert value(text, "strata:kv_tier_load_bytes_total", tier="ram") == 3 * PAGE_BYTES
    assert value(text, "strata:kv_tier_load_bytes_total", tier="disk") == 0
    assert value(text, "strata:kv_load_seconds_count", tier="ram") == 1
    assert value(text, "strata:kv_load_seconds_count", tier="disk") == 0
    assert value(text, "strata:prefix_cache_hits_total") == 12


def test_stored_pages_count_their_bytes(offloading):
    scheduler, executor, link = offloading
    scheduler.add_request(make_request("a", PROMPT, max_tokens=3))
    run_step(scheduler, executor)               # 13 tokens computed: blocks 0-2 published
    run_step(scheduler, executor, done=[1, 2])  # their store is planned; 2 of 3 copies land
    assert value(scheduler.metrics.text(), "strata:kv_tier_store_bytes_total", tier="ram") == 0
    run_step(scheduler, executor, done=[3])     # the last copy: the lease completes
    assert value(scheduler.metrics.text(), "strata:kv_tier_store_bytes_total", tier="ram") == 3 * PAGE_BYTES


def test_the_kvstore_part_is_its_text_and_kvstore_up(offloading):
    scheduler, _, link = offloading
    assert value(scheduler.tiers.kvstore_metrics(), "strata:kvstore_up") == 0   # no answer
    link.metrics = ("# HELP strata:kvstore_leases Leases held now.\n"
                    "# TYPE strata:kvstore_leases gauge\nstrata:kvstore_leases 2.0\n")
    text = scheduler.metrics.text() + scheduler.tiers.kvstore_metrics()
    assert value(text, "strata:kvstore_up") == 1
    assert value(text, "strata:kvstore_leases") == 2
    assert value(text, "strata:num_requests_running") == 0
