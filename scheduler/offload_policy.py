"""Offload policies: small objects that decide; KVStoreTiers (offload.py) moves pages.

- LoadPolicy: load a prefix from the kvstore or recompute it, from measured costs.
- Prefetcher: warm the RAM tier with the pages of queued requests before their turn.
"""
from __future__ import annotations

import logging
import queue
import threading

from protos.v1 import kvstore_pb2 as pb
from scheduler.kv_link import KVStoreLink

log = logging.getLogger(__name__)

EWMA_WEIGHT = 0.2
# Starting guesses until measured: seconds to ready one page in RAM (Lookup hit -> PrepareLoad
# pinned), by tier, per byte; and host -> device copy bandwidth.
INITIAL_SECONDS_PER_BYTE = {pb.TIER_RAM: 1 / 20e9, pb.TIER_DISK: 1 / 1e9, pb.TIER_REMOTE: 1 / 0.3e9}
COPY_BYTES_PER_SECOND = 4e9
MIN_PREFILL_TOKENS_MEASURED = 32


def ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - EWMA_WEIGHT) * old + EWMA_WEIGHT * new


class LoadPolicy:
    """Per request: load its n kvstore pages, or recompute their tokens? Loading costs the
    kvstore's time to pin them in RAM (measured per tier: promoting from NVMe or a backing host is
    slow) plus the copy; recomputing costs n * block_size tokens at the measured prefill speed."""

    def __init__(self, page_bytes: int, block_size: int, is_always_load: bool = False):
        """is_always_load: skip the cost model (tests, and tiers known to be fast)."""
        self.page_bytes, self.block_size = page_bytes, block_size
        self.is_always_load = is_always_load
        self.seconds_per_byte = dict(INITIAL_SECONDS_PER_BYTE)
        self.prefill_tokens_per_s: float | None = None   # None: not measured, loading wins

    def observe_prefill(self, num_tokens: int, seconds: float) -> None:
        if num_tokens >= MIN_PREFILL_TOKENS_MEASURED and seconds > 0:
            self.prefill_tokens_per_s = ewma(self.prefill_tokens_per_s, num_tokens / seconds)

    def observe_prepare(self, tier: int, num_pages: int, seconds: float) -> None:
        """A PrepareLoad of num_pages whose slowest page came from `tier` took `seconds`."""
        if num_pages and tier in self.seconds_per_byte:
            per_byte = seconds / (num_pages * self.page_bytes)
            self.seconds_per_byte[tier] = ewma(self.seconds_per_byte[tier], per_byte)

    def load_seconds(self, tiers: list[int]) -> float:
        copy = self.page_bytes / COPY_BYTES_PER_SECOND
        return sum(self.page_bytes * self.seconds_per_byte.get(t, 0.0) + copy for t in tiers)

    def recompute_seconds(self, num_pages: int) -> float | None:
        if self.prefill_tokens_per_s is None:
            return None
        return num_pages * self.block_size / self.prefill_tokens_per_s

    def num_to_load(self, tiers: list[int]) -> int:
        """How many of the leading present pages to load (all of them, or none)."""
        recompute = self.recompute_seconds(len(tiers))
        if self.is_always_load or recompute is None or self.load_seconds(tiers) < recompute:
            return len(tiers)
        return 0


class Prefetcher:
    """A thread that asks the kvstore to promote the pages of queued requests into RAM (PrepareLoad
    then CompleteLoad at once), so that their admission finds RAM hits. Off the engine thread:
    promotion reads NVMe or a backing host."""

    def __init__(self, link: KVStoreLink, max_queued: int = 64):
        self.link = link
        self.queue: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=max_queued)
        self.num_promoted_pages = 0
        self.thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self.thread.start()

    def submit(self, keys: list[bytes]) -> bool:
        """False when the queue is full (the request is tried again at a later step)."""
        try:
            self.queue.put_nowait(keys)
            return True
        except queue.Full:
            return False

    def _run(self) -> None:
        while (keys := self.queue.get()) is not None:
            tiers = self.link.lookup(keys)
            if not tiers or all(tier == pb.TIER_RAM for tier in tiers):
                continue
            lease = self.link.prepare_load(keys[:len(tiers)])
            if lease is not None:
                self.link.complete_load(lease.lease_id)
                self.num_promoted_pages += len(lease.slots)

    def close(self) -> None:
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass
