"""Admission of the head of the waiting queue: its reusable prefix, the one room check, and the
table it starts with.

    block table   [device hits][loaded from the host tiers][first chunk ...]
                   acquired     fresh; pages copied in      fresh, allocated when it runs
                   (shared)

The prefix is the device prefix index's leading hits over full blocks, then what the host tiers
hold of the following full blocks; never the last token (something must be left to sample
from). The request is admitted only if the whole table fits, its first chunk included.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from scheduler.block_hash import extend_keys
from scheduler.block_pool import BlockPool, num_blocks_for
from scheduler.host_tiers import HostTiers
from scheduler.request import Request

if TYPE_CHECKING:
    from scheduler.scheduler import SchedulerConfig


class Admission(NamedTuple):
    block_ids: list[int]     # the table's prefix (device hits + blocks of loaded pages), held
    is_loading: bool         # wait in LOADING until its pages are in; else run now
    num_device_hits: int     # block_ids[:num_device_hits] are device prefix hits


def first_chunk(config: "SchedulerConfig", request: Request, num_computed_blocks: int,
                budget: int) -> tuple[int, int]:
    """(tokens of the first chunk after num_computed_blocks computed blocks, blocks the table
    needs to hold them)."""
    num_computed = num_computed_blocks * config.block_size
    num_tokens = min(request.num_tokens - num_computed, budget)
    return num_tokens, num_blocks_for(num_computed + num_tokens, config.block_size)


def match_prefix(config: "SchedulerConfig", pool: BlockPool, request: Request) -> tuple[list[int], int]:
    """(device hit block ids, number of full blocks that could be reused)."""
    if not config.enable_prefix_caching:
        return [], 0
    # Full blocks only, and never the last token: something must be left to sample from.
    num_full_blocks = (request.num_tokens - 1) // config.block_size
    extend_keys(request.block_keys, request.namespace, request.token_ids, config.block_size,
                num_full_blocks)
    return pool.match_prefix(request.block_keys[:num_full_blocks]), num_full_blocks


def admit(config: "SchedulerConfig", pool: BlockPool, tiers: HostTiers, request: Request,
          budget: int) -> Admission | None:
    """None: its table does not fit this step. Else its device hits are acquired and its host
    pages' blocks allocated (the request's references from now on)."""
    hit_block_ids, num_full_blocks = match_prefix(config, pool, request)
    host_hit = tiers.lookup(request, len(hit_block_ids), num_full_blocks)
    num_computed_blocks = len(hit_block_ids) + host_hit.num_blocks
    _, num_table_blocks = first_chunk(config, request, num_computed_blocks, budget)
    num_hits_unused = sum(pool.ref_counts[b] == 0 for b in hit_block_ids)   # free until acquired
    if not pool.can_allocate(num_table_blocks - len(hit_block_ids) + num_hits_unused):
        return None
    pool.acquire(hit_block_ids)
    if host_hit.num_blocks == 0:
        return Admission(hit_block_ids, False, len(hit_block_ids))
    # Fewer pages may be leased than looked up: the table only shrinks, so it still fits.
    load = tiers.start_load(request, host_hit)
    return Admission(hit_block_ids + load.block_ids, load.is_loading, len(hit_block_ids))
