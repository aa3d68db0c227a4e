"""Generation.GetMetrics through the real processes (kvstore + executor + scheduler): exact
counters after a known workload, RAM-tier loads after a prefix is evicted then reused, and the
kvstore's part (strata:kvstore_up 0 once it is gone)."""
import random
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from greedy_parity import generate_tokens
from protos.v1 import generation_pb2
from servers import start_daemons
from strata.metrics import main as strata_metrics

pytestmark = pytest.mark.system

BLOCK = 4
POOL_BLOCKS = 64
MAX_TOKENS = 7


def scrape(stub) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value of GetMetrics, through prometheus_client's parser."""
    text = stub.GetMetrics(generation_pb2.GetMetricsRequest(), timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def ram(name: str) -> tuple:
    return (name, (("tier", "ram"),))


def wait_attached(stub, vocab_size: int, rng: random.Random) -> None:
    """Generate until a page reached the kvstore: the scheduler registers with it in the
    background, and blocks published before that are never stored (so never loaded)."""
    deadline = time.monotonic() + 30
    while next(t for t in stub.GetStats(generation_pb2.GetStatsRequest()).tiers
               if t.tier == "ram").bytes_stored == 0:
        assert time.monotonic() < deadline, "the scheduler never attached its kvstore"
        generate_tokens(stub, [rng.randrange(1, vocab_size) for _ in range(8)], 2)


def test_get_metrics_counts_a_known_workload_and_ram_tier_loads(llama_dir, capsys):
    with start_daemons(llama_dir, num_device_blocks=POOL_BLOCKS, block_size=BLOCK,
                       kvstore_args=("--ram", "32MiB"),
                       scheduler_args=("--load-policy", "always")) as server:
        vocab_size = server.stub.GetModelInfo(generation_pb2.GetModelInfoRequest()).vocab_size
        rng = random.Random(3)
        wait_attached(server.stub, vocab_size, rng)
        before = scrape(server.stub)

        def delta(metrics, *key):
            return metrics[key] - before[key]
        prompts = [[rng.randrange(1, vocab_size) for _ in range(20)] for _ in range(5)]
        streamed = [generate_tokens(server.stub, prompt, MAX_TOKENS) for prompt in prompts]
        assert all(reason == generation_pb2.FINISH_REASON_LENGTH for _, reason in streamed)
        metrics = scrape(server.stub)
        assert delta(metrics, "strata:generation_tokens_total", ()) == sum(len(t) for t, _ in streamed) == 35
        assert delta(metrics, "strata:prompt_tokens_total", ()) == 100
        assert delta(metrics, "strata:time_to_first_token_seconds_count", ()) == 5
        assert delta(metrics, "strata:e2e_request_latency_seconds_count", ()) == 5
        assert delta(metrics, "strata:request_success_total", (("finished_reason", "length"),)) == 5
        assert metrics[("strata:num_requests_running", ())] == 0
        assert metrics[("strata:kvstore_up", ())] == 1
        assert metrics[ram("strata:kv_tier_load_bytes_total")] == 0

        # 6 prompts of 13 blocks each (78 > the pool's 64) evict every block of the first five;
        # the first prompt again then loads its 4 full blocks from the kvstore's RAM tier.
        for _ in range(6):
            generate_tokens(server.stub, [rng.randrange(1, vocab_size) for _ in range(52)], MAX_TOKENS)
        again, _ = generate_tokens(server.stub, prompts[0], MAX_TOKENS)
        assert again == streamed[0][0]
        metrics = scrape(server.stub)
        stats = server.stub.GetStats(generation_pb2.GetStatsRequest())
        ram_stats = next(t for t in stats.tiers if t.tier == "ram")
        assert delta(metrics, "strata:generation_tokens_total", ()) == 35 + 7 * MAX_TOKENS
        assert delta(metrics, "strata:request_success_total", (("finished_reason", "length"),)) == 12
        assert metrics[ram("strata:cached_tokens_total")] == 4 * BLOCK
        assert metrics[ram("strata:kv_load_seconds_count")] == 1
        assert metrics[ram("strata:kv_tier_load_bytes_total")] == ram_stats.bytes_loaded > 0
        assert metrics[ram("strata:kv_tier_store_bytes_total")] == ram_stats.bytes_stored > 0
        assert metrics[ram("strata:kvstore_hits_total")] >= 4       # the kvstore's own count
        assert metrics[ram("strata:kvstore_pages")] > 0
        total = metrics[("strata:generation_tokens_total", ())]
        assert strata_metrics(["--server", server.address]) == 0   # `strata metrics` prints it
        assert f"strata:generation_tokens_total {total:.1f}\n" in capsys.readouterr().out

        server.processes[0].send_signal(signal.SIGKILL)   # the kvstore
        server.processes[0].wait(timeout=10)
        metrics = scrape(server.stub)
        assert metrics[("strata:kvstore_up", ())] == 0
        assert ram("strata:kvstore_pages") not in metrics
        assert metrics[("strata:generation_tokens_total", ())] == total
