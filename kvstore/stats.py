"""What the store reports: the tier a page is in, counters per tier, a Stats snapshot."""
import enum
from dataclasses import dataclass
from typing import NamedTuple


class Tier(enum.IntEnum):
    """Same numbers as strata.v1.Tier."""
    RAM = 1
    DISK = 2
    REMOTE = 3


@dataclass(slots=True)
class TierCounters:
    num_hits: int = 0
    num_misses: int = 0
    num_evictions: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    num_store_skips: int = 0
    num_corrupt: int = 0
    num_io_errors: int = 0

    def count_hit(self, num_bytes: int) -> None:
        self.num_hits += 1
        self.bytes_out += num_bytes


class TierSnapshot(NamedTuple):
    tier: Tier
    num_pages: int
    num_bytes: int
    capacity_bytes: int
    counters: TierCounters


class StoreStats(NamedTuple):
    tiers: list[TierSnapshot]  # RAM, then NVMe and the backing where the store has them
    num_leases: int
    num_expired_leases: int
    num_namespaces: int
