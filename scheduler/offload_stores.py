"""The store queue: full device blocks waiting to be written through to the kvstore, each once.

A key is queued at most once and skipped while it is known to be in the kvstore (remembered
after a store or a PrepareStore that found it). Queued blocks are not held: one evicted before
its turn is dropped when its batch is taken. The oldest entries fall off a full queue.
"""
from __future__ import annotations

from collections import OrderedDict, deque

from scheduler.block_pool import BlockPool

MAX_REMEMBERED_KEYS = 1 << 16   # keys known to be in the kvstore: skip their PrepareStore


class StoreQueue:
    def __init__(self, pool: BlockPool, max_queued: int):
        self.pool, self.max_queued = pool, max_queued
        self.queue: deque[tuple[int, bytes]] = deque()   # (block id, key)
        self.queued_keys: set[bytes] = set()
        self.stored_keys: OrderedDict[bytes, None] = OrderedDict()

    @property
    def has_queued(self) -> bool:
        return bool(self.queue)

    def push(self, items: list[tuple[int, bytes]]) -> None:
        """Newly published (block id, key) pairs, at the tail."""
        self.queue.extend(self._new(items))
        self._trim()

    def push_front(self, items: list[tuple[int, bytes]]) -> None:
        """A preempted request's pairs, at the head in their order (a swap-out)."""
        self.queue.extendleft(reversed(self._new(items)))
        self._trim()

    def take_batch(self, max_pages: int) -> list[tuple[int, bytes]]:
        """Up to max_pages pairs from the head whose block still holds its key."""
        batch = []
        while self.queue and len(batch) < max_pages:
            block_id, key = self.queue.popleft()
            self.queued_keys.discard(key)
            if self.pool.block_keys[block_id] == key:   # else evicted before its turn: dropped
                batch.append((block_id, key))
        return batch

    def remember(self, keys: list[bytes]) -> None:
        """These keys are in the kvstore now: never queue them again (within a bound)."""
        for key in keys:
            self.stored_keys[key] = None
        while len(self.stored_keys) > MAX_REMEMBERED_KEYS:
            self.stored_keys.popitem(last=False)

    def forget_stored(self) -> None:
        """A (maybe) new kvstore: what the old one held is not known to be there."""
        self.stored_keys.clear()

    def _new(self, items: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        new = [(b, k) for b, k in items if k not in self.queued_keys and k not in self.stored_keys]
        self.queued_keys.update(k for _, k in new)
        return new

    def _trim(self) -> None:
        while len(self.queue) > self.max_queued:
            self.queued_keys.discard(self.queue.popleft()[1])
