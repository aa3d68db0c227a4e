"""The host tiers below the device block pool (RAM, NVMe, a backing host): the Scheduler's one
seam for pages that leave the device and come back.

Runs in the engine thread, inside the Scheduler, which calls it in this order:

    plan        begin_step -> admissions (lookup, start_load) -> take_moves -> prefetch
    result      complete_moves -> the LOADING requests it returns start running
    any time    queue_stores (blocks just published), queue_preempted (before a table is
                released), abort_load (a LOADING request finishes), reset (the executor lost
                every move)

The tiers never write a request's block table or status: they hand back blocks and decisions and
the Scheduler moves the request. What they hold, they hold two ways, each taken and given back
by one path named on the method: a reference (`BlockPool.acquire`) on each device block a copy
is in flight for, and a kvstore lease on each host page pinned for a copy.

`NullHostTiers` is "no kvstore" (the device prefix cache alone): every method is a constant and
nothing is looked up, moved or held. `KVStoreTiers` (offload.py) is the kvstore-backed one.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, NamedTuple

from protos.v1 import executor_pb2, generation_pb2
from scheduler.block_pool import BlockPool
from scheduler.request import Request


class HostHit(NamedTuple):
    """What lookup found past a device prefix hit. The Scheduler reads num_blocks; the rest is
    for start_load."""
    num_blocks: int              # full blocks to load into fresh device blocks; 0: recompute
    first_index: int = 0         # block table index of the first of them (the device hits)
    keys: list[bytes] = []       # every key asked past the device hit
    tiers: list[int] = []        # the tier (pb.Tier) of each of the num_blocks pages


NO_HIT = HostHit(0)


class StartedLoad(NamedTuple):
    block_ids: list[int]    # fresh device blocks the pages land in, after the hits; []: none pinned
    is_loading: bool        # the request waits in LOADING; False: run it now (blocking loads,
                            # copied before this step's forward, or nothing to wait for)


class PageMoves(NamedTuple):
    """One plan's page copies (executor.proto's StepPlan fields of the same names)."""
    loads: list[executor_pb2.PageMove]
    stores: list[executor_pb2.PageMove]
    blocking_loads: list[executor_pb2.PageMove]
    wait_for_moves_s: float      # > 0 while any move is in flight


NO_MOVES = PageMoves([], [], [], 0.0)   # shared: never mutated


class ReadyLoad(NamedTuple):
    request: Request
    num_computed_tokens: int     # its table holds this many tokens' KV (up to a failed page)


class HostTiers(ABC):
    """Built over the Scheduler's block pool and metrics: `make_tiers(pool, metrics=metrics)`
    (the tiers observe their page loads and stores there)."""

    num_loading: int             # requests in LOADING (their pages are being copied in)
    has_moves_in_flight: bool    # moves taken for a plan (or queued for one) not reported yet

    @abstractmethod
    def begin_step(self) -> None:
        """First thing in each plan, before any allocation could evict a queued block: attach a
        newly registered store, then claim a batch of queued stores. Each claimed block whose
        page the store lacks is held (one reference) and leased until complete_moves reports the
        batch's last copy, or reset()."""

    @abstractmethod
    def lookup(self, request: Request, num_hits: int, num_full_blocks: int) -> HostHit:
        """Which of request.block_keys[num_hits:num_full_blocks] (computed by the caller) to
        load rather than recompute. A query: pins nothing, so start_load may get fewer."""

    @abstractmethod
    def start_load(self, request: Request, hit: HostHit) -> StartedLoad:
        """Load hit's pages into fresh blocks. Preconditions: hit.num_blocks > 0; the caller
        checked room for hit.num_blocks + the first chunk and acquired its device hits (so no
        allocation here evicts them). Leases the pages until their last copy is reported (or
        reset), allocates one block per leased page (the request's references from then on) and
        queues the copies. Blocking loads also hold one more reference on those blocks until the
        copies are reported, even if the request finishes first. block_ids == []: nothing could
        be leased; nothing is held."""

    @abstractmethod
    def take_moves(self) -> PageMoves:
        """The copies queued since the last call, for this step's plan: in flight from now on.
        Takes nothing more: their blocks and leases stay held as the call that queued them says."""

    @abstractmethod
    def prefetch(self, waiting: list[tuple[tuple[int, int], Request]]) -> None:
        """Warm faster tiers for the head of the waiting heap (read only). Holds no device block;
        a kvstore lease it takes is given back as soon as the pages are promoted. May set
        request.is_prefetched and extend request.block_keys (a memo)."""

    @abstractmethod
    def queue_stores(self, request: Request, indexes: list[int]) -> None:
        """request.block_ids[i] for i in indexes were just published under request.block_keys[i]:
        write them through. Holds nothing until begin_step claims them; a block evicted before its
        turn is dropped."""

    @abstractmethod
    def queue_preempted(self, request: Request) -> None:
        """request is about to release its table: its full blocks not stored yet go to the head
        of the store queue (its resume is then a device or host hit). As queue_stores."""

    @abstractmethod
    def complete_moves(self, result: executor_pb2.StepResult) -> list[ReadyLoad]:
        """Account result's done and failed moves. A store's last copy: its lease completes
        (published, or rolled back if a copy failed) and its blocks are released. A load's last
        copy: its lease is given back, the pages copied before the first failed one are published
        in the prefix index, and held blocks are released. Returns the LOADING requests now
        ready, in the order their last copy was reported."""

    @abstractmethod
    def abort_load(self, request: Request) -> None:
        """request (LOADING) finishes: every block of its table is held (one more reference) until
        its copies are reported, or reset(); the caller then releases its own references."""

    @abstractmethod
    def reset(self, requeue: Callable[[Request], None]) -> None:
        """The executor lost every move (it restarted, or Reset drained them): roll back every
        lease, release every reference the tiers hold. Each LOADING request, in admission order
        and right after its lease, goes to requeue, still holding its table: the caller releases
        it and queues the request again. Requests with blocking loads are running: the caller
        preempts them."""

    @abstractmethod
    def remap_arena(self) -> None:
        """A restarted executor maps nothing: map the attached arena on it again (if that fails,
        the store is down until it registers again). Holds and releases nothing."""

    @abstractmethod
    def tier_stats(self) -> list[generation_pb2.TierStats]:
        """GetStats `tiers` (any thread)."""

    @abstractmethod
    def kvstore_metrics(self) -> str:
        """The kvstore's part of GetMetrics (Prometheus text, any thread): its metrics and
        strata:kvstore_up; "" without a kvstore."""

    @abstractmethod
    def close(self) -> None:
        """Stop the tiers' threads and connections (shutdown). Leases still open are left to the
        kvstore, which reclaims them after its lease TTL."""


class NullHostTiers(HostTiers):
    """No host tiers: a hit is a device prefix hit or nothing."""

    num_loading = 0
    has_moves_in_flight = False

    def __init__(self, pool: BlockPool, metrics=None):
        pass

    def begin_step(self) -> None:
        pass

    def lookup(self, request: Request, num_hits: int, num_full_blocks: int) -> HostHit:
        return NO_HIT

    def start_load(self, request: Request, hit: HostHit) -> StartedLoad:
        raise AssertionError("lookup offered nothing to load")

    def take_moves(self) -> PageMoves:
        return NO_MOVES

    def prefetch(self, waiting: list[tuple[tuple[int, int], Request]]) -> None:
        pass

    def queue_stores(self, request: Request, indexes: list[int]) -> None:
        pass

    def queue_preempted(self, request: Request) -> None:
        pass

    def complete_moves(self, result: executor_pb2.StepResult) -> list[ReadyLoad]:
        return []

    def abort_load(self, request: Request) -> None:
        raise AssertionError("no request is LOADING without host tiers")

    def reset(self, requeue: Callable[[Request], None]) -> None:
        pass

    def remap_arena(self) -> None:
        pass

    def tier_stats(self) -> list[generation_pb2.TierStats]:
        return []

    def kvstore_metrics(self) -> str:
        return ""

    def close(self) -> None:
        pass
