"""Eviction policies. A policy only nominates: it returns a sort key, the store moves the data."""
from typing import Protocol

from kvstore.index import Entry


class EvictionPolicy(Protocol):
    def priority(self, entry: Entry) -> float:
        """Sort key of an evictable entry: the smallest is evicted first. Pure; never mutates."""


class LRUPolicy:
    """Least recently used first: `last_access` is a counter the index bumps on every touch."""

    def priority(self, entry: Entry) -> float:
        return entry.last_access


class FIFOPolicy:
    """Oldest stored first, whatever the reads (shows the interface admits other policies)."""

    def priority(self, entry: Entry) -> float:
        return entry.created


POLICIES = {"lru": LRUPolicy, "fifo": FIFOPolicy}
