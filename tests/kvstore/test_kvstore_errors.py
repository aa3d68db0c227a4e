"""Bad input gets a clear status and the daemon keeps serving; a full disk degrades the NVMe tier."""
import os
import subprocess
import tempfile

import grpc
import pytest

from bench.kvstore_pages import key_of, page_of
from kvstore.disk import FsyncMode
from kvstore.store import Store, StoreConfig
from kvstore_harness import NUM_SLOTS, PAGE, Harness, uid
from protos.v1 import kvstore_pb2 as pb
from runtime.kvstore_client import KVStoreClient
from runtime.sizes import parse_size


def status_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def test_unknown_namespace_is_failed_precondition(make):
    kv = make("ram")
    code, details = status_of(lambda: kv.client.prepare_store("nobody", [key_of(1)]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "register first" in details
    assert status_of(lambda: kv.client.lookup("nobody", [key_of(1)]))[0] == \
        grpc.StatusCode.FAILED_PRECONDITION


def test_wrong_key_length_is_invalid_argument(make):
    kv = make("ram")
    for call in (lambda: kv.client.lookup("model-a", [b"short"]),
                 lambda: kv.client.prepare_load("model-a", [key_of(1), b"x" * 33]),
                 lambda: kv.client.prepare_store("model-a", [b""]),
                 lambda: list(kv.client.get_pages([b"k"]))):
        code, details = status_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "32-byte" in details
    assert kv.put(uid("still-serving")) == 1


def test_wrong_page_size_is_invalid_argument(make):
    kv = make("ram")
    code, details = status_of(lambda: kv.client.register("model-a", PAGE * 2))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_bytes 4096" in details
    assert status_of(lambda: kv.client.register("model-b", 0))[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, details = status_of(lambda: kv.client.register("huge", 1 << 30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "--ram" in details
    assert status_of(lambda: kv.client.put_pages([(key_of(1), b"")]))[0] == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_two_layouts_share_the_ram_budget(make):
    kv = make("ram", num_slots=4)
    small = kv.client.register("model-small", PAGE // 2)
    assert small.slot_bytes == PAGE and small.arena_path != kv.layout.arena_path
    kv.put(*(uid(i) for i in range(4)))
    key = key_of(uid("small"))
    plan = kv.client.prepare_store("model-small", [key])  # evicts one 4 KiB page of model-a
    kv.client.complete_store(plan.lease_id)
    ram = kv.client.stats().tiers[0]
    assert (ram.num_pages, ram.num_evictions) == (4, 1)


def test_sizes_parse():
    assert [parse_size(s) for s in ("4GiB", "512MiB", "65536", "1.5KiB")] == \
        [4 << 30, 512 << 20, 65536, 1536]


def test_disk_size_smaller_than_a_page_skips_stores_and_keeps_serving(make, tmp_path):
    kv = make("ram+nvme")
    kv.store.disk.capacity_bytes = PAGE  # below one page file (header + page)
    names = [uid(i) for i in range(6)]
    for name in names:
        kv.put(name)
    disk = kv.client.stats().tiers[1]
    assert disk.tier == pb.TIER_DISK and disk.num_store_skips == 2 and disk.num_pages == 0
    assert kv.get(*names[2:]) == [page_of(key_of(n), PAGE) for n in names[2:]]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs (real ENOSPC) needs root")
def test_enospc_degrades_the_nvme_tier_and_the_daemon_keeps_serving(shm_dir, tmp_path):
    mount = tempfile.mkdtemp(prefix="strata-enospc-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mount], check=True)
    try:
        config = StoreConfig(ram_bytes=NUM_SLOTS * PAGE, shm_dir=shm_dir, fsync=FsyncMode.NEVER,
                             disk_bytes=1 << 30, disk_dir=mount)  # the disk fills after a few pages
        kv = Harness(Store(config), f"unix:{tmp_path}/enospc.sock")
        try:
            names = [uid(i) for i in range(14)]
            for name in names:
                kv.put(name)
            disk = kv.client.stats().tiers[1]
            assert disk.num_store_skips > 0 and disk.num_pages < 10
            assert kv.get(names[-1]) == [page_of(key_of(names[-1]), PAGE)]
        finally:
            kv.close()
    finally:
        subprocess.run(["umount", mount], check=False)
        os.rmdir(mount)
