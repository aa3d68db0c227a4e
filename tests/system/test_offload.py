"""Continuous batching x offloading through the real processes (kvstore + executor + scheduler):
exact tokens under constant eviction, reload and swap; kvstore and executor crashes; aborts while
pages move leave nothing held anywhere."""
import os
import random
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from checkpoints import load_hf_model
from greedy_parity import generate_tokens, greedy_request, hf_greedy, shared_prefix_cases
from protos.v1 import generation_pb2
from servers import kvstore_stats, start_daemons, start_up

pytestmark = pytest.mark.system

BLOCK = 4
POOL_BLOCKS = 64
KVSTORE = ("--ram", "32MiB")
# RAM for a quarter of the pages: most loads come from disk, through the LOADING state.
KVSTORE_DISK = ("--ram", "1MiB", "--disk", "{run_dir}/disk", "--disk-size", "64MiB")
TIERS = {"ram": KVSTORE, "ram+disk": KVSTORE_DISK}
# On a tiny model recomputing 48 tokens is faster than a kvstore round trip, so the cost model
# would rightly recompute; these tests are about the load path.
ALWAYS_LOAD = ("--load-policy", "always")


def run_all(stub, cases, num_threads: int = 64):
    with ThreadPoolExecutor(num_threads) as pool:
        return [tokens for tokens, _ in pool.map(lambda c: generate_tokens(stub, *c), cases)]


def wait_idle(stub, timeout_s: float = 30):
    """Stats once nothing runs, waits or loads and every block is back (stores drain)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = stub.GetStats(generation_pb2.GetStatsRequest())
        if (stats.num_running == stats.num_waiting == stats.num_loading == 0
                and stats.num_free_device_blocks == stats.num_device_blocks):
            return stats
        assert time.monotonic() < deadline, f"not idle: {stats}"
        time.sleep(0.1)


def ram_tier(stats):
    return next(t for t in stats.tiers if t.tier == "ram")


@pytest.mark.parametrize("tiers", ["ram", "ram+disk"])
def test_tiny_pool_with_offload_matches_no_offload_and_transformers(llama_dir, tiers):
    model = load_hf_model(llama_dir)
    cases = shared_prefix_cases(model.config.vocab_size, 64)
    expected = [hf_greedy(model, p, n) for p, n in cases]
    with start_daemons(llama_dir, num_device_blocks=POOL_BLOCKS, block_size=BLOCK) as server:
        without = run_all(server.stub, cases)
    with start_daemons(llama_dir, num_device_blocks=POOL_BLOCKS, block_size=BLOCK,
                       kvstore_args=TIERS[tiers], scheduler_args=ALWAYS_LOAD) as server:
        with_offload = run_all(server.stub, cases)
        # Every family again: most were evicted from the tiny pool, the kvstore has them.
        again = run_all(server.stub, cases[:16], num_threads=4)
        stats = wait_idle(server.stub)
        kv = kvstore_stats(server)
    assert without == expected
    assert with_offload == expected
    assert again == expected[:16]
    loaded = sum(tier.num_hits for tier in stats.tiers)
    assert stats.num_preemptions > 0 and loaded >= 16 * 6 and ram_tier(stats).bytes_stored > 0
    if tiers == "ram+disk":
        assert next(t for t in stats.tiers if t.tier == "disk").num_hits > 0
    else:   # RAM pages are copied before the forward: their latency is the copy, not the step
        assert 0 < ram_tier(stats).load_latency_ms_p50 < 250
    assert stats.is_integrity_ok and kv.num_leases == 0


def test_kvstore_killed_mid_run_then_restarted(llama_dir):
    model = load_hf_model(llama_dir)
    cases = shared_prefix_cases(model.config.vocab_size, 48, seed=7)
    expected = [hf_greedy(model, p, n) for p, n in cases]
    with start_daemons(llama_dir, num_device_blocks=POOL_BLOCKS, block_size=BLOCK,
                       kvstore_args=KVSTORE, scheduler_args=ALWAYS_LOAD) as server:
        kvstore = server.processes[0]
        with ThreadPoolExecutor(48) as pool:
            futures = [pool.submit(generate_tokens, server.stub, *case) for case in cases]
            while ram_tier(server.stub.GetStats(generation_pb2.GetStatsRequest())).num_hits < 20:
                time.sleep(0.02)          # loads are happening: now pull the plug
            kvstore.send_signal(signal.SIGKILL)
            results = [future.result()[0] for future in futures]
        assert results == expected
        hits_down = ram_tier(wait_idle(server.stub)).num_hits

        server.restart_kvstore()
        # The scheduler re-attaches, stores the families again, then loads them: pass over all
        # 16 (3x the device pool) until a load hits; which pass that is depends on timing.
        deadline = time.monotonic() + 60
        while True:
            assert run_all(server.stub, cases[:16], num_threads=4) == expected[:16]
            if ram_tier(wait_idle(server.stub)).num_hits > hits_down:
                break                                   # hits resumed, nothing else restarted
            assert time.monotonic() < deadline, "no kvstore hit within 60 s of its restart"
        assert all(p.poll() is None for p in server.processes if p is not kvstore)


def test_executor_killed_mid_run_under_strata_up(llama_dir, tmp_path):
    model = load_hf_model(llama_dir)
    cases = shared_prefix_cases(model.config.vocab_size, 32, seed=9)
    expected = [hf_greedy(model, p, n) for p, n in cases]
    args = ["--model", str(llama_dir), "--num-device-blocks", str(POOL_BLOCKS), "--block-size",
            str(BLOCK), "--data-dir", str(tmp_path / "data"), "--kvstore-ram", "32MiB"]
    with start_up(args) as server:
        executor_pid = int(re.search(r"started executor \(pid (\d+)",
                                     (server.run_dir / "up.log").read_text()).group(1))
        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(generate_tokens, server.stub, *case) for case in cases]
            while server.stub.GetStats(generation_pb2.GetStatsRequest()).num_finished_requests < 4:
                time.sleep(0.02)
            os.kill(executor_pid, signal.SIGKILL)
            results = [future.result()[0] for future in futures]
        stats = wait_idle(server.stub)
    assert results == expected
    assert stats.num_finished_requests == 32 and stats.is_integrity_ok


@pytest.mark.parametrize("tiers", ["ram", "ram+disk"])
def test_aborts_while_pages_load_or_store_leave_nothing_held(llama_dir, tiers):
    model = load_hf_model(llama_dir)
    cases = shared_prefix_cases(model.config.vocab_size, 64, seed=11)
    rng = random.Random(3)
    with start_daemons(llama_dir, num_device_blocks=POOL_BLOCKS, block_size=BLOCK,
                       kvstore_args=TIERS[tiers], scheduler_args=ALWAYS_LOAD) as server:
        run_all(server.stub, cases[:16], num_threads=4)      # the kvstore holds every family
        for round_index in range(3):
            streams = [server.stub.Generate(greedy_request(*case)) for case in cases]
            for stream in rng.sample(streams, len(streams)):
                time.sleep(rng.uniform(0, 0.01))
                stream.cancel()
        stats = wait_idle(server.stub)
        kv = kvstore_stats(server)
        # Still exact afterwards.
        assert run_all(server.stub, cases[:4], num_threads=4) == [hf_greedy(model, p, n) for p, n in cases[:4]]
    assert stats.num_loading == 0 and stats.is_integrity_ok
    assert sum(tier.num_hits for tier in stats.tiers) > 0
    assert kv.num_leases == 0
