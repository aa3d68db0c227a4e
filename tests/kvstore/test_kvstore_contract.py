"""The kvstore contract, parametrized over RAM-only, RAM+NVMe, RAM+remote (a second kvstore
process as backing) and RAM+redis (a private redis-server as backing). The store under test runs in this process behind real gRPC on a unix
socket; clients map its real shared-memory arena."""
import subprocess
import time

import grpc
import pytest

from bench.kvstore_pages import key_of, page_of
from kvstore.disk import FsyncMode
from kvstore.store import Store, StoreConfig
from kvstore_harness import NUM_SLOTS, PAGE, Harness, uid
from protos.v1 import kvstore_pb2 as pb

# ram+remote starts a second kvstore process (the `backing` fixture), ram+redis a redis-server
# (`redis_url`): system tests.
TIERS = ["ram", "ram+nvme", pytest.param("ram+remote", marks=pytest.mark.system),
         pytest.param("ram+redis", marks=pytest.mark.system)]


@pytest.mark.parametrize("tier", TIERS)
def test_bytes_round_trip_exactly(make, tier):
    kv = make(tier)
    names = [uid(i) for i in range(3)]
    assert kv.put(*names) == 3
    assert kv.get(*names) == [page_of(key_of(n), PAGE) for n in names]
    assert kv.tiers(*names) == [pb.TIER_RAM] * 3


@pytest.mark.parametrize("tier", TIERS)
def test_evicted_page_comes_back_from_the_lower_tier(make, tier):
    kv = make(tier)
    names = [uid(i) for i in range(NUM_SLOTS + 2)]
    for name in names:
        kv.put(name)
    expected_first = {"ram": 0, "ram+nvme": 1, "ram+remote": 1, "ram+redis": 1}[tier]
    assert len(kv.get(names[0])) == expected_first
    if expected_first:
        assert kv.get(names[0]) == [page_of(key_of(names[0]), PAGE)]


@pytest.mark.parametrize("tier", TIERS)
def test_page_being_written_is_invisible(make, tier):
    kv = make(tier)
    name = uid("half")
    key = key_of(name)
    plan = kv.client.prepare_store("model-a", [key])
    kv.arena.page(plan.slots[0][1], PAGE)[:PAGE // 2] = page_of(key, PAGE)[:PAGE // 2]
    assert kv.client.lookup("model-a", [key]).num_present == 0
    load = kv.client.prepare_load("model-a", [key])
    assert load.slots == []
    kv.client.complete_load(load.lease_id)
    assert list(kv.client.get_pages([key])) == []
    kv.arena.page(plan.slots[0][1], PAGE)[:] = page_of(key, PAGE)
    assert kv.client.complete_store(plan.lease_id) == 1
    assert kv.get(name) == [page_of(key, PAGE)]


@pytest.mark.parametrize("tier", TIERS)
def test_leased_page_is_never_evicted(make, tier):
    kv = make(tier)
    pinned = uid("pinned")
    kv.put(pinned)
    lease = kv.client.prepare_load("model-a", [key_of(pinned)])
    slot = lease.slots[0]
    for i in range(3 * NUM_SLOTS):  # far more stores than slots: every other page cycles out
        kv.put(uid(i))
    assert bytes(kv.arena.page(slot, PAGE)) == page_of(key_of(pinned), PAGE)
    assert kv.tiers(pinned) == [pb.TIER_RAM]
    kv.client.complete_load(lease.lease_id)


@pytest.mark.parametrize("tier", TIERS)
def test_store_with_every_slot_pinned_is_resource_exhausted(make, tier):
    kv = make(tier)
    names = [uid(i) for i in range(NUM_SLOTS)]
    kv.put(*names)
    lease = kv.client.prepare_load("model-a", [key_of(n) for n in names])
    assert len(lease.slots) == NUM_SLOTS
    with pytest.raises(grpc.RpcError) as error:
        kv.put(uid("one-too-many"))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    kv.client.complete_load(lease.lease_id)
    assert kv.put(uid("after")) == 1


@pytest.mark.parametrize("tier", TIERS)
def test_expired_leases_are_reclaimed(make, tier):
    kv = make(tier, lease_ttl_s=0.3)
    loaded, abandoned = uid("loaded"), uid("abandoned")
    kv.put(loaded)
    load = kv.client.prepare_load("model-a", [key_of(loaded)])
    store = kv.client.prepare_store("model-a", [key_of(abandoned)])
    time.sleep(0.8)
    stats = kv.client.stats()
    assert stats.num_leases == 0 and stats.num_expired_leases == 2
    for complete in (lambda: kv.client.complete_load(load.lease_id),
                     lambda: kv.client.complete_store(store.lease_id)):
        with pytest.raises(grpc.RpcError) as error:
            complete()
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert kv.client.lookup("model-a", [key_of(abandoned)]).num_present == 0
    assert kv.put(*(uid(i) for i in range(NUM_SLOTS))) == NUM_SLOTS  # every slot reusable


@pytest.mark.parametrize("tier", TIERS)
def test_dedup_returns_no_slot_for_a_present_key(make, tier):
    kv = make(tier)
    present, new = uid("present"), uid("new")
    kv.put(present)
    plan = kv.client.prepare_store("model-a", [key_of(present), key_of(new)])
    assert [key_index for key_index, _ in plan.slots] == [1]
    kv.client.complete_store(plan.lease_id, is_ok=False)
    assert kv.client.lookup("model-a", [key_of(new)]).num_present == 0


@pytest.mark.parametrize("tier", TIERS)
def test_eviction_order_is_lru(make, tier):
    kv = make(tier)
    names = [uid(i) for i in range(NUM_SLOTS)]
    for name in names:
        kv.put(name)
    kv.get(names[0])  # 0 becomes most recent: 1 is now the least recently used
    kv.put(uid("newcomer"))
    lower = {"ram": [], "ram+nvme": [pb.TIER_DISK], "ram+remote": [pb.TIER_REMOTE],
             "ram+redis": [pb.TIER_REMOTE]}[tier]
    assert kv.tiers(names[1]) == lower
    assert kv.tiers(names[0], *names[2:]) == [pb.TIER_RAM] * (NUM_SLOTS - 1)


@pytest.mark.parametrize("tier", TIERS)
def test_prepare_load_stops_at_the_first_absent_key(make, tier):
    kv = make(tier)
    a, b, absent = uid("a"), uid("b"), uid("absent")
    kv.put(a, b)
    assert kv.get(a, absent, b) == [page_of(key_of(a), PAGE)]


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs: room for about eight page files, far below the tier's 1 GiB budget."""
    path = tmp_path / "small-disk"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield path
    subprocess.run(["umount", str(path)], check=False)


def test_a_disk_smaller_than_its_budget_shrinks_the_budget_once_and_keeps_taking_pages(
        shm_dir, tmp_path, small_disk, caplog):
    config = StoreConfig(ram_bytes=NUM_SLOTS * PAGE, shm_dir=shm_dir, fsync=FsyncMode.NEVER,
                         disk_bytes=1 << 30, disk_dir=str(small_disk))
    kv = Harness(Store(config), f"unix:{tmp_path}/small.sock")
    try:
        names = [uid(i) for i in range(40)]
        for name in names:
            kv.put(name)
        full = [r for r in caplog.records if "the disk is full" in r.getMessage()]
        assert len(full) == 1 and full[0].levelname == "WARNING"
        assert kv.store.disk_capacity_bytes <= 64 << 10   # what the disk held when it filled
        # The tier still turns over: the latest pages evicted from RAM are on disk and load back.
        recent = names[-NUM_SLOTS - 2:-NUM_SLOTS]
        assert kv.get(*recent) == [page_of(key_of(n), PAGE) for n in recent]
    finally:
        kv.close()
