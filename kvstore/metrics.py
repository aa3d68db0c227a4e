"""The kvstore's Prometheus metrics (KVStore.GetMetrics): the Stats counters, read at scrape time.

The store already counts everything under its lock (stats.py, tiers.py); this collector only
renames a `Store.stats()` snapshot, so nothing is counted twice and no I/O path changes.
Every name starts with `strata:kvstore_`; per-tier series carry `tier` = ram | disk | remote.
"""
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from kvstore.stats import StoreStats
from kvstore.store import Store

PREFIX = "strata:kvstore_"
# (metric name after the prefix, TierCounters field, help): monotonic counters per tier.
TIER_COUNTERS = (
    ("hits", "num_hits", "Pages found in this tier on loads."),
    ("misses", "num_misses", "Pages missed by this tier on loads."),
    ("evictions", "num_evictions", "Pages evicted from this tier (demoted or dropped)."),
    ("bytes_in", "bytes_in", "Bytes written into this tier."),
    ("bytes_out", "bytes_out", "Bytes read out of this tier."),
    ("store_skips", "num_store_skips",
     "Stores into this tier skipped (disk full, backing down, backing write queue full)."),
    ("corrupt_pages", "num_corrupt", "Pages found corrupt (checksum, header, length) and deleted."),
    ("disk_errors", "num_io_errors",
     "I/O errors: failed page file writes, vanished page files; failed backing calls."),
)


class StoreCollector:
    """A prometheus_client custom collector over one Store (any thread: it takes the lock)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        stats = self.store.stats()
        yield from tier_gauges(stats)
        yield from tier_counters(stats)
        yield GaugeMetricFamily(PREFIX + "leases", "Leases held now.", value=stats.num_leases)
        yield CounterMetricFamily(PREFIX + "expired_leases", "Leases reclaimed after their TTL.",
                                  value=stats.num_expired_leases)
        yield GaugeMetricFamily(PREFIX + "namespaces", "Registered namespaces.",
                                value=stats.num_namespaces)


def tier_gauges(stats: StoreStats) -> list[GaugeMetricFamily]:
    pages = GaugeMetricFamily(PREFIX + "pages", "Pages held now, per tier.", labels=["tier"])
    held = GaugeMetricFamily(PREFIX + "bytes", "Bytes of pages held now, per tier.",
                             labels=["tier"])
    capacity = GaugeMetricFamily(PREFIX + "capacity_bytes", "Capacity in bytes (0: unlimited or "
                                 "not configured).", labels=["tier"])
    for tier in stats.tiers:
        name = [tier.tier.name.lower()]
        pages.add_metric(name, tier.num_pages)
        held.add_metric(name, tier.num_bytes)
        capacity.add_metric(name, tier.capacity_bytes)
    return [pages, held, capacity]


def tier_counters(stats: StoreStats) -> Iterator[CounterMetricFamily]:
    for name, field, text in TIER_COUNTERS:
        family = CounterMetricFamily(PREFIX + name, text, labels=["tier"])
        for tier in stats.tiers:
            family.add_metric([tier.tier.name.lower()], getattr(tier.counters, field))
        yield family


def make_registry(store: Store) -> CollectorRegistry:
    """The daemon's own registry (never prometheus_client's global one)."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    return registry


def metrics_text(registry: CollectorRegistry) -> str:
    """Prometheus text format 0.0.4."""
    return generate_latest(registry).decode()
