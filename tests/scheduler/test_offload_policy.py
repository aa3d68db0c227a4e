"""The offload policies alone: the load-or-recompute arithmetic, and the prefetcher promoting
NVMe pages into RAM through a real kvstore (in this process, over a unix socket)."""
import time

import pytest

from bench.kvstore_pages import key_of, page_of
from kvstore.arena_io import map_arena, store_pages
from kvstore.store import Store, StoreConfig
from kvstore_server import serve_in_process
from protos.v1 import kvstore_pb2 as pb
from runtime.kvstore_client import KVStoreClient
from scheduler.kv_link import KVStoreLink
from scheduler.offload_policy import LoadPolicy, Prefetcher

PAGE = 8192


def test_cost_model_loads_until_recompute_is_measured_faster():
    policy = LoadPolicy(page_bytes=1 << 20, block_size=16)
    assert policy.num_to_load([pb.TIER_DISK] * 4) == 4          # nothing measured: load
    policy.observe_prefill(num_tokens=16_000, seconds=1.0)      # 16k tokens/s: 1 ms per page
    policy.observe_prepare(pb.TIER_DISK, num_pages=4, seconds=4 * 0.01)   # 10 ms per disk page
    assert policy.seconds_per_byte[pb.TIER_DISK] == pytest.approx(
        0.8 * (1 / 1e9) + 0.2 * (0.01 / (1 << 20)))
    assert policy.num_to_load([pb.TIER_DISK] * 4) == 0           # disk slower than recompute
    assert policy.num_to_load([pb.TIER_RAM] * 4) == 4            # RAM: 0.3 ms per page
    policy.observe_prefill(num_tokens=8, seconds=1.0)            # too small a step to measure
    assert policy.prefill_tokens_per_s == 16_000
    assert LoadPolicy(1 << 20, 16, is_always_load=True).num_to_load([pb.TIER_DISK] * 3) == 3


@pytest.fixture
def kvstore(tmp_path):
    store = Store(StoreConfig(ram_bytes=4 * PAGE, shm_dir=str(tmp_path), disk_dir=str(tmp_path / "disk"),
                              disk_bytes=1 << 20))
    address = f"unix:{tmp_path}/kv.sock"
    server = serve_in_process(store, address)
    yield address
    server.stop(0)
    store.close()


def test_prefetcher_promotes_disk_pages_of_queued_requests_into_ram(kvstore):
    client = KVStoreClient(kvstore)
    layout = client.register("ns", PAGE)
    arena = map_arena(layout)
    keys = [key_of(i) for i in range(8)]
    for batch in (keys[:4], keys[4:]):   # RAM holds 4: the first four go down to disk
        store_pages(client, arena, layout, [(key, page_of(key, PAGE)) for key in batch])
    assert client.lookup("ns", keys[:2]).tiers == [pb.TIER_DISK, pb.TIER_DISK]
    link = KVStoreLink(kvstore, "ns", PAGE)
    link.start()
    deadline = time.monotonic() + 10
    while (registered := link.take_registered()) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    link.set_up(registered)
    prefetcher = Prefetcher(link)
    assert prefetcher.submit(keys[:2])
    while client.lookup("ns", keys[:2]).tiers != [pb.TIER_RAM, pb.TIER_RAM]:
        assert time.monotonic() < deadline, "the prefetcher did not promote the pages"
        time.sleep(0.05)
    assert client.stats().num_leases == 0 and prefetcher.num_promoted_pages == 2
    prefetcher.close()
    link.close()
    arena.close()
    client.close()
