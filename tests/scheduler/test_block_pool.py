"""BlockPool: exact block ids, free order, LRU eviction of cached blocks, ref counts, keys."""
import hashlib

import pytest

from scheduler.block_hash import block_key, extend_keys, make_namespace
from scheduler.block_pool import BlockPool

NS = make_namespace("model-a", "float32", (2, 2, 4, 2, 8), "")


def key(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()


def test_allocate_hands_out_lowest_ids_first_and_reuses_freed_in_order():
    pool = BlockPool(6)
    assert pool.allocate(2) == [0, 1]
    assert pool.allocate(3) == [2, 3, 4]
    pool.release([4, 3])
    pool.release([0])
    assert pool.num_free_blocks == 4
    assert pool.allocate(4) == [5, 4, 3, 0]
    assert not pool.can_allocate(1)
    assert pool.allocate(0) == []
    assert pool.check_integrity()


def test_free_uncached_blocks_are_reused_before_cached_ones():
    pool = BlockPool(4)
    blocks = pool.allocate(4)
    pool.cache_block(blocks[0], key(0))
    pool.cache_block(blocks[1], key(1))
    pool.release([3, 2, 1, 0])
    assert pool.num_free_blocks == 4 and pool.num_cached_blocks == 2
    assert pool.allocate(2) == [3, 2]
    assert pool.num_cached_blocks == 2
    # Cached ones now go in LRU order: 1 was released before 0.
    assert pool.allocate(1) == [1]
    assert pool.match_prefix([key(0), key(1)]) == [0]
    assert pool.num_cached_blocks == 1
    assert pool.check_integrity()


def test_lru_order_follows_release_time_and_prefix_hits_refresh_it():
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    for block, i in ((a, 0), (b, 1), (c, 2)):
        pool.cache_block(block, key(i))
    pool.release([a])
    pool.release([b])
    pool.release([c])
    hit = pool.match_prefix([key(0)])
    assert hit == [a]
    pool.acquire(hit)       # a is used again: not evictable
    pool.release(hit)       # ... and now the most recently used
    assert pool.allocate(1) == [b]
    assert pool.allocate(1) == [c]
    assert pool.allocate(1) == [a]
    assert pool.num_cached_blocks == 0
    assert pool.check_integrity()


def test_ref_counts_keep_shared_blocks_until_the_last_release():
    pool = BlockPool(2)
    (block,) = pool.allocate(1)
    pool.cache_block(block, key(7))
    pool.acquire([block])
    assert pool.ref_counts[block] == 2
    pool.release([block])
    assert pool.num_free_blocks == 1   # still used by one holder
    pool.release([block])
    assert pool.num_free_blocks == 2 and pool.match_prefix([key(7)]) == [block]
    with pytest.raises(AssertionError):
        pool.release([block])
    assert pool.check_integrity()


def test_cache_block_keeps_the_first_copy_of_a_key():
    pool = BlockPool(2)
    first, second = pool.allocate(2)
    assert pool.cache_block(first, key(1))
    assert not pool.cache_block(second, key(1))
    pool.release([second, first])
    assert list(pool.free_blocks) == [second]
    assert pool.match_prefix([key(1)]) == [first]
    assert pool.check_integrity()


def test_integrity_check_detects_a_corrupted_pool():
    pool = BlockPool(3)
    pool.allocate(1)
    assert pool.check_integrity()
    pool.free_blocks.append(0)   # a used block also on the free queue
    assert not pool.check_integrity()


def test_hash_chain_depends_on_parent_tokens_and_salt():
    tokens = list(range(32))
    keys = []
    extend_keys(keys, NS, tokens, 16, 2)
    assert keys[0] == block_key(NS, None, tokens[:16])
    assert keys[1] == block_key(NS, keys[0], tokens[16:])
    assert len(keys[0]) == 32
    # Same second block after another first block: a different key.
    other = []
    extend_keys(other, NS, [99] + tokens[1:], 16, 2)
    assert other[1] != keys[1]
    salted = []
    extend_keys(salted, make_namespace("model-a", "float32", (2, 2, 4, 2, 8), "tenant-b"), tokens, 16, 2)
    assert salted[0] != keys[0]
    assert make_namespace("model-b", "float32", (2, 2, 4, 2, 8), "") != NS
    assert make_namespace("model-a", "bfloat16", (2, 2, 4, 2, 8), "") != NS
    # Stable across processes: a fixed digest, not Python's randomized hash().
    assert block_key(b"\x00" * 32, None, [1, 2, 3]).hex() == hashlib.sha256(
        b"\x00" * 64 + bytes([1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0])).hexdigest()
