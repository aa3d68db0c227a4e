"""The Redis backing through the real processes: two `strata up` instances with their own
kvstores share one redis-server; a 3-master Redis Cluster spreads the pages and loses a master
(kill -9) in the middle of a run. Every request gives transformers' greedy tokens throughout.
Servers are Debian's redis-server on loopback ports, started and stopped by PID; without one
the tests skip and say why."""
import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.redis_process import missing_reason, redis_cluster, redis_server
from checkpoints import load_hf_model
from greedy_parity import generate_cached, hf_greedy, shared_prefix_cases
from protos.v1 import generation_pb2, kvstore_pb2 as pb
from servers import kvstore_metrics, kvstore_stats, start_daemons, start_up

pytestmark = [pytest.mark.system,
              pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]

BLOCK = 4
ALWAYS_LOAD = ("--load-policy", "always")


def wait_for_keys(client, num_keys: int, timeout_s: float = 30) -> int:
    """The server's key count once it holds at least num_keys (A's pages, written behind)."""
    deadline = time.monotonic() + timeout_s
    while (count := client.dbsize()) < num_keys:
        assert time.monotonic() < deadline, f"only {count} keys in the backing after {timeout_s} s"
        time.sleep(0.1)
    return count


def up_args(model_dir, data_dir, backing_url: str) -> list[str]:
    return ["--model", str(model_dir), "--block-size", str(BLOCK), "--num-device-blocks", "256",
            "--data-dir", str(data_dir), "--kvstore-ram", "16MiB", "--kvstore-disk", "0",
            "--kvstore-backing", backing_url]


def test_second_instance_reuses_the_pages_the_first_computed(llama_dir, tmp_path):
    model = load_hf_model(llama_dir)
    rng = random.Random(7)
    prompts = [[rng.randrange(1, model.config.vocab_size) for _ in range(96)] for _ in range(3)]
    expected = [hf_greedy(model, prompt, 8) for prompt in prompts]
    with redis_server(tmp_path / "redis") as server, \
            start_up(up_args(llama_dir, tmp_path / "a", server.url)) as instance_a, \
            start_up(up_args(llama_dir, tmp_path / "b", server.url)) as instance_b:
        computed = [generate_cached(instance_a.stub, prompt, 8) for prompt in prompts]
        assert [tokens for tokens, _ in computed] == expected
        assert all(cached == 0 for _, cached in computed)   # nobody had these prefixes
        wait_for_keys(server.client(), len(prompts) * 96 // BLOCK)
        reused = [generate_cached(instance_b.stub, prompt, 8) for prompt in prompts]
    assert [tokens for tokens, _ in reused] == expected
    # B never saw these prompts: its cached tokens are pages A stored in Redis.
    assert all(cached >= 88 for _, cached in reused), reused


def test_cluster_spreads_pages_and_a_killed_master_costs_only_misses(llama_dir, tmp_path):
    model = load_hf_model(llama_dir)
    cases = shared_prefix_cases(model.config.vocab_size, 48, seed=3)
    expected = [hf_greedy(model, *case) for case in cases]
    with redis_cluster(tmp_path / "cluster", 3) as cluster:
        # A RAM tier of a few dozen pages and a small device pool: most loads come from Redis.
        kvstore = ("--ram", "256KiB", "--backing", cluster.url, "--backing-timeout", "0.2")
        with start_daemons(llama_dir, num_device_blocks=64, block_size=BLOCK, kvstore_args=kvstore,
                           scheduler_args=ALWAYS_LOAD) as daemons:
            with ThreadPoolExecutor(8) as pool:
                warm = [tokens for tokens, _ in pool.map(lambda c: generate_cached(daemons.stub, *c), cases[:16])]
            assert warm == expected[:16]
            counts = [wait_for_keys(node.client(), 1) for node in cluster.servers]
            assert all(count > 0 for count in counts), counts   # every master holds pages
            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(generate_cached, daemons.stub, *case) for case in cases]
                while finished(daemons) < 24:
                    time.sleep(0.02)
                os.kill(cluster.servers[1].pid, signal.SIGKILL)
                results = [future.result()[0] for future in futures]
            assert results == expected
            hits_after_kill = kvstore_stats(daemons).tiers[-1].num_hits
            again = [generate_cached(daemons.stub, *case)[0] for case in cases[:8]]
            assert again == expected[:8]
            remote = kvstore_stats(daemons).tiers[-1]
            # The two masters left still serve their pages: only the dead one's keys miss.
            assert remote.num_hits > hits_after_kill, (hits_after_kill, remote.num_hits)
            metrics = kvstore_metrics(daemons)
    assert remote.tier == pb.TIER_REMOTE and remote.num_hits > 0   # loads came from the cluster
    assert remote.num_io_errors > 0    # the dead master: misses, then the circuit
    assert f'strata:kvstore_hits_total{{tier="remote"}} {remote.num_hits}.0' in metrics


def finished(daemons) -> int:
    return daemons.stub.GetStats(generation_pb2.GetStatsRequest()).num_finished_requests
