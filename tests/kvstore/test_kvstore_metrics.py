"""KVStore.GetMetrics over real gRPC in-process: the Stats counters under Prometheus names, with
exact values after evictions, a corrupt NVMe record and a vanished segment file."""
import os

from prometheus_client.parser import text_string_to_metric_families

from bench.kvstore_pages import key_of
from kvstore.disk import HEADER_BYTES
from kvstore_harness import NUM_SLOTS, PAGE, uid


def samples(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def record_of(kv, name: str) -> tuple[str, int]:
    """The segment file holding a page and the offset of its record."""
    entry = kv.store.index.get(key_of(name))
    return kv.store.disk.files.path(entry.disk_segment), entry.disk_offset


def test_metrics_match_stats_after_evictions_a_corrupt_and_a_vanished_page(make):
    kv = make("ram+nvme")
    names = [uid(f"p{i}") for i in range(NUM_SLOTS + 2)]
    for name in names:
        kv.put(name)   # the first two are evicted from RAM to the NVMe tier (write-back)
    before = samples(kv.client.metrics())
    assert before[("strata:kvstore_pages", (("tier", "ram"),))] == NUM_SLOTS
    assert before[("strata:kvstore_pages", (("tier", "disk"),))] == 2
    assert before[("strata:kvstore_bytes", (("tier", "ram"),))] == NUM_SLOTS * PAGE
    assert before[("strata:kvstore_evictions_total", (("tier", "ram"),))] == 2
    assert before[("strata:kvstore_bytes_in_total", (("tier", "ram"),))] == (NUM_SLOTS + 2) * PAGE
    assert before[("strata:kvstore_namespaces", ())] == 1
    path, offset = record_of(kv, names[0])
    with open(path, "r+b") as file:   # flip the page's last byte
        file.seek(offset + HEADER_BYTES + PAGE - 1)
        last = file.read(1)
        file.seek(offset + HEADER_BYTES + PAGE - 1)
        file.write(bytes([last[0] ^ 0xFF]))
    assert kv.get(names[0]) == []
    assert record_of(kv, names[1])[0] == path
    os.remove(path)   # both pages were written to the open segment: the second one vanishes
    assert kv.get(names[1]) == []
    after = samples(kv.client.metrics())
    assert after[("strata:kvstore_corrupt_pages_total", (("tier", "disk"),))] == 1
    assert after[("strata:kvstore_disk_errors_total", (("tier", "disk"),))] == 1
    assert after[("strata:kvstore_pages", (("tier", "disk"),))] == kv.store.stats().tiers[1].num_pages
    assert after[("strata:kvstore_leases", ())] == 0
    stats = kv.client.stats().tiers[1]
    assert (stats.num_corrupt, stats.num_io_errors) == (1, 1)
