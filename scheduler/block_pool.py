"""The device block pool: ref counts, a free queue and the prefix index of full blocks.

Every block is in exactly one region:

    used          ref_count > 0                  held by >= 1 request (or a pin)
    free          ref_count == 0, no key          reused first, oldest freed first
    cached        ref_count == 0, has a key       reusable by a prefix hit; evicted LRU

`allocate` takes free blocks first, then evicts cached ones (least recently released first).
A used block may also carry a key: it is then findable by `match_prefix` and shared.

How the host tiers (host_tiers.py, offload.py) use it: a block whose store is in flight is held
with `acquire` until the store completes (so it cannot be reused), and a block filled by a load
is allocated, loaded, then published with `cache_block` only once the load completed.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Iterable, Sequence


def num_blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks a table needs to hold num_tokens tokens (its last block may be partly filled)."""
    return -(-num_tokens // block_size)


class BlockPool:
    def __init__(self, num_blocks: int):
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be > 0, got {num_blocks}")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.block_keys: list[bytes | None] = [None] * num_blocks
        self.free_blocks: deque[int] = deque(range(num_blocks))
        # block id -> None, least recently released first.
        self.cached_free_blocks: OrderedDict[int, None] = OrderedDict()
        self.key_to_block: dict[bytes, int] = {}

    # ---- queries -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks `allocate` can hand out now (free + cached-but-unused)."""
        return len(self.free_blocks) + len(self.cached_free_blocks)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks with a key (used or not)."""
        return len(self.key_to_block)

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= self.num_free_blocks

    def match_prefix(self, keys: Sequence[bytes]) -> list[int]:
        """Block ids of the longest leading run of `keys` found in the index (query only)."""
        block_ids = []
        for key in keys:
            block_id = self.key_to_block.get(key)
            if block_id is None:
                break
            block_ids.append(block_id)
        return block_ids

    # ---- commands ------------------------------------------------------------------------
    def allocate(self, num_blocks: int) -> list[int]:
        """Hand out `num_blocks` blocks with ref_count 1 and no key.

        Precondition: can_allocate(num_blocks). allocate(0) returns [].
        """
        assert self.can_allocate(num_blocks), (num_blocks, self.num_free_blocks)
        block_ids = []
        for _ in range(num_blocks):
            if self.free_blocks:
                block_id = self.free_blocks.popleft()
            else:
                block_id, _ = self.cached_free_blocks.popitem(last=False)
                self._forget_key(block_id)
            self.ref_counts[block_id] = 1
            block_ids.append(block_id)
        return block_ids

    def acquire(self, block_ids: Iterable[int]) -> None:
        """Take one more reference on blocks that are used or cached (a prefix hit, a pin)."""
        for block_id in block_ids:
            if self.ref_counts[block_id] == 0:
                assert self.block_keys[block_id] is not None, f"block {block_id} is free"
                del self.cached_free_blocks[block_id]
            self.ref_counts[block_id] += 1

    def release(self, block_ids: Iterable[int]) -> None:
        """Drop one reference each. At zero a keyed block becomes cached (most recently used
        end of the LRU), an unkeyed one free. Release a request's table tail first, so that its
        head (the most shareable part) is evicted last."""
        for block_id in block_ids:
            count = self.ref_counts[block_id]
            assert count > 0, f"block {block_id} released more often than acquired"
            self.ref_counts[block_id] = count - 1
            if count == 1:
                if self.block_keys[block_id] is None:
                    self.free_blocks.append(block_id)
                else:
                    self.cached_free_blocks[block_id] = None

    def cache_block(self, block_id: int, key: bytes) -> bool:
        """Publish a used, fully written block under `key`. Returns False (and leaves the block
        unkeyed) when another block already holds that key, e.g. two requests computed the
        same prefix concurrently: the first one stays the shared copy."""
        assert self.ref_counts[block_id] > 0, f"block {block_id} is not in use"
        if key in self.key_to_block or self.block_keys[block_id] is not None:
            return False
        self.block_keys[block_id] = key
        self.key_to_block[key] = block_id
        return True

    def reset_prefix_cache(self) -> None:
        """Forget every key (cached blocks become free); used blocks stay used."""
        for block_id in list(self.key_to_block.values()):
            self.block_keys[block_id] = None
        self.key_to_block.clear()
        self.free_blocks.extend(self.cached_free_blocks)
        self.cached_free_blocks.clear()

    def _forget_key(self, block_id: int) -> None:
        key = self.block_keys[block_id]
        self.block_keys[block_id] = None
        del self.key_to_block[key]

    # ---- invariants ----------------------------------------------------------------------
    def check_integrity(self) -> bool:
        """free + used + cached == total, each block in one region, index and keys agree."""
        free = set(self.free_blocks)
        cached = set(self.cached_free_blocks)
        used = {b for b, count in enumerate(self.ref_counts) if count > 0}
        checks = (
            len(free) == len(self.free_blocks),
            len(free) + len(cached) + len(used) == self.num_blocks,
            not (free & cached) and not (free & used) and not (cached & used),
            all(count >= 0 for count in self.ref_counts),
            all(self.block_keys[b] is None for b in free),
            all(self.block_keys[b] is not None for b in cached),
            all(self.block_keys[b] == key for key, b in self.key_to_block.items()),
            sum(key is not None for key in self.block_keys) == len(self.key_to_block),
        )
        return all(checks)
