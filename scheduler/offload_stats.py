"""Counters of the kvstore tiers as the scheduler sees them (GetStats `tiers`)."""
from __future__ import annotations

import statistics
from collections import deque

from protos.v1 import generation_pb2
from protos.v1 import kvstore_pb2 as pb
from scheduler.metrics import SchedulerMetrics

TIER_NAMES = {pb.TIER_RAM: "ram", pb.TIER_DISK: "disk", pb.TIER_REMOTE: "remote"}
LATENCY_WINDOW = 512


class OffloadStats:
    """Engine thread writes, handler threads read (ints and deques: a torn read is harmless)."""

    def __init__(self, page_bytes: int, metrics: SchedulerMetrics):
        """metrics: each load and store is observed there too (its Prometheus series)."""
        self.page_bytes = page_bytes
        self.metrics = metrics
        self.num_hits = {tier: 0 for tier in TIER_NAMES}     # pages loaded, by source tier
        self.num_lookup_pages = 0    # full blocks past the device hit asked of the kvstore
        self.num_stored = 0
        self.load_seconds: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.store_seconds: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def on_load(self, tiers: list[int], seconds: float) -> None:
        for tier in tiers:
            if tier in self.num_hits:
                self.num_hits[tier] += 1
        self.load_seconds.append(seconds)
        names = [TIER_NAMES[tier] for tier in tiers if tier in TIER_NAMES]
        self.metrics.observe_kv_load(names, self.page_bytes, seconds)

    def on_store(self, num_pages: int, seconds: float) -> None:
        self.num_stored += num_pages
        self.store_seconds.append(seconds)
        self.metrics.observe_kv_store(num_pages, self.page_bytes)

    def tier_stats(self, kvstore: pb.StatsResponse | None) -> list[generation_pb2.TierStats]:
        """One entry per tier: pages loaded from it (hits), pages looked up that it did not supply
        (misses: absent, from another tier, or recomputed by choice), the kvstore's occupancy;
        bytes stored and latencies are counted on the RAM entry (stores land in RAM)."""
        held = {t.tier: t for t in kvstore.tiers} if kvstore is not None else {}
        tiers = [pb.TIER_RAM] + [t for t in (pb.TIER_DISK, pb.TIER_REMOTE) if t in held]
        out = []
        for tier in tiers:
            entry = generation_pb2.TierStats(
                tier=TIER_NAMES[tier], num_hits=self.num_hits[tier],
                bytes_loaded=self.num_hits[tier] * self.page_bytes)
            entry.num_misses = max(0, self.num_lookup_pages - self.num_hits[tier])
            if tier in held:
                entry.num_pages, entry.num_bytes = held[tier].num_pages, held[tier].num_bytes
            if tier == pb.TIER_RAM:
                entry.bytes_stored = self.num_stored * self.page_bytes
                entry.load_latency_ms_p50 = _p50_ms(self.load_seconds)
                entry.store_latency_ms_p50 = _p50_ms(self.store_seconds)
            out.append(entry)
        return out


def _p50_ms(samples: deque[float]) -> float:
    return statistics.median(list(samples)) * 1e3 if samples else 0.0
