"""The device block pool x the kvstore: page loads and stores riding on step plans.

Mechanism only; the decisions are LoadPolicy (load or recompute) and Prefetcher (offload_policy.py)
and the store rule below (write every newly full block through once, within a per-step budget).

    admission   device prefix hit, then Lookup the rest: PrepareLoad pins the pages, fresh blocks
                are allocated and the request waits in LOADING while the executor copies
    stores      full blocks queue up as they fill; each step PrepareStore picks those the kvstore
                lacks (dedup); each block is held (ref count) until its copy is reported
    results     done/failed moves: a loaded request starts running with its loaded prefix
                computed (a failed page and the ones after it are recomputed); a store lease
                completes (publish, or roll back if a copy failed) and its blocks are released
    preemption  the victim's unstored full blocks go to the head of the store queue (swap):
                on resume they are device or kvstore hits and only the tail is recomputed

A request's blocks are never released while a copy into them is in flight, even when it is
aborted: they go back to the pool when the executor reports the move.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from protos.v1 import executor_pb2
from protos.v1 import kvstore_pb2 as pb
from runtime.kvstore_client import ArenaLayout
from scheduler.block_hash import extend_keys
from scheduler.block_pool import BlockPool
from scheduler.kv_link import KVStoreLink
from scheduler.offload_policy import LoadPolicy, Prefetcher
from scheduler.offload_stats import OffloadStats
from scheduler.request import Request, RequestStatus

log = logging.getLogger(__name__)

MAX_REMEMBERED_KEYS = 1 << 16   # keys known to be in the kvstore: skip their PrepareStore
WAIT_FOR_MOVES_SECONDS = 0.05


@dataclass(slots=True)
class OffloadConfig:
    max_store_pages_per_step: int = 256
    max_store_queue: int = 8192
    num_prefetch_requests: int = 8
    # RAM pages are copied before the forward of the step that admits the request (a page copy
    # takes microseconds, a step up to seconds); NVMe/remote pages go through LOADING.
    is_ram_load_blocking: bool = True
    is_always_load: bool = False     # load every kvstore hit, whatever the cost model says


@dataclass(slots=True)
class Loading:
    request: Request
    lease_id: int
    first_index: int            # block table index of the first loaded block
    block_ids: list[int]
    tiers: list[int]
    num_pending: int
    started: float
    sent: float = 0.0           # blocking loads: when the plan carrying them was built
    first_failed: int | None = None
    is_aborted: bool = False
    is_blocking: bool = False   # copied before the forward; the request is already running
    held_block_ids: list[int] = field(default_factory=list)   # an aborted request's whole table


@dataclass(slots=True)
class Storing:
    lease_id: int
    block_ids: list[int]
    keys: list[bytes]
    num_pending: int
    started: float
    is_failed: bool = False


class Admission(NamedTuple):
    is_loading: bool       # the request now waits in LOADING
    is_blocked: bool       # too few free blocks: stop admitting this step
    loaded_block_ids: list[int] = []   # blocking loads: in the table after the hits; run now


NOT_LOADED = Admission(False, False)


class Offloader:
    def __init__(self, link: KVStoreLink, pool: BlockPool, block_size: int, page_bytes: int,
                 map_arena: Callable[[ArenaLayout], bool], config: OffloadConfig | None = None):
        """map_arena: asks the executor to map a kvstore arena (engine thread); False on failure."""
        self.link, self.pool, self.block_size = link, pool, block_size
        self.map_arena = map_arena
        self.config = config or OffloadConfig()
        self.policy = LoadPolicy(page_bytes, block_size, self.config.is_always_load)
        self.prefetcher = Prefetcher(link)
        self.stats = OffloadStats(page_bytes)
        self.loading: dict[str, Loading] = {}
        self.in_flight: dict[int, tuple[Loading | Storing, int]] = {}   # move id -> (owner, index)
        self.pending_loads: list[executor_pb2.PageMove] = []
        self.pending_stores: list[executor_pb2.PageMove] = []
        self.pending_blocking_loads: list[executor_pb2.PageMove] = []
        self.store_queue: deque[tuple[int, bytes]] = deque()
        self.queued_keys: set[bytes] = set()
        self.stored_keys: OrderedDict[bytes, None] = OrderedDict()
        self.next_move_id = 1

    @property
    def num_loading(self) -> int:
        return len(self.loading)

    @property
    def has_in_flight(self) -> bool:
        return bool(self.in_flight)

    def begin_step(self) -> None:
        """Engine thread, first thing in each plan: map a newly registered arena on the executor,
        then claim the queued stores (held from now on) before this step's allocations could
        evict their blocks."""
        layout = self.link.take_registered()
        if layout is not None and self.map_arena(layout):
            self.stored_keys.clear()   # maybe a new kvstore: what the old one held is gone
            self.link.set_up(layout)
        if self.store_queue:
            self._issue_stores()

    # ---- admission -----------------------------------------------------------------------
    def admit(self, request: Request, hit_block_ids: list[int], num_full_blocks: int,
              budget: int) -> Admission:
        """After a device prefix hit of hit_block_ids: load the next full blocks if the kvstore
        holds them and loading beats recomputing. RAM pages land before this step's forward
        (blocking loads: the request runs in this very step, with hit + loaded blocks in its
        table and the room for its first chunk checked); pages that must be promoted from NVMe
        or a backing host first make the request wait in LOADING instead."""
        num_hits = len(hit_block_ids)
        if num_hits >= num_full_blocks or not self.link.is_up:
            return NOT_LOADED
        keys = request.block_keys[num_hits:num_full_blocks]
        tiers = self.link.lookup(keys)
        num_load = self.policy.num_to_load(tiers) if tiers else 0
        if num_load == 0:
            self.stats.num_lookup_pages += len(keys)
            return NOT_LOADED
        num_loaded_tokens = (num_hits + num_load) * self.block_size
        num_chunk = min(request.num_tokens - num_loaded_tokens, budget)
        num_chunk_blocks = -(-(num_loaded_tokens + num_chunk) // self.block_size) - num_hits - num_load
        num_hits_unused = sum(self.pool.ref_counts[b] == 0 for b in hit_block_ids)
        if not self.pool.can_allocate(num_load + num_chunk_blocks + num_hits_unused):
            return Admission(False, True)   # asked again next step: not counted yet
        self.stats.num_lookup_pages += len(keys)
        started = time.perf_counter()
        lease = self.link.prepare_load(keys[:num_load])
        if lease is None or not lease.slots:
            if lease is not None:
                self.link.complete_load(lease.lease_id)
            return NOT_LOADED
        tiers = tiers[:len(lease.slots)]
        self.policy.observe_prepare(max(tiers), len(tiers), time.perf_counter() - started)
        is_blocking = self.config.is_ram_load_blocking and all(t == pb.TIER_RAM for t in tiers)
        self.pool.acquire(hit_block_ids)
        block_ids = self.pool.allocate(len(tiers))
        request.block_ids = hit_block_ids + block_ids
        entry = Loading(request, lease.lease_id, num_hits, block_ids, tiers, len(block_ids), started,
                        is_blocking=is_blocking)
        if is_blocking:
            self.pool.acquire(block_ids)   # held until the copies are reported, even on abort
            moves = self.pending_blocking_loads
        else:
            request.status = RequestStatus.LOADING
            self.loading[request.request_id] = entry
            moves = self.pending_loads
        for index, (block_id, slot) in enumerate(zip(block_ids, lease.slots)):
            moves.append(self._move(entry, index, block_id, slot))
        return Admission(not is_blocking, False, block_ids if is_blocking else [])

    def _move(self, owner: Loading | Storing, index: int, block_id: int, slot: int):
        move_id, self.next_move_id = self.next_move_id, self.next_move_id + 1
        self.in_flight[move_id] = (owner, index)
        return executor_pb2.PageMove(block_id=block_id, slot=slot, arena_id=self.link.layout.arena_id,
                                     move_id=move_id)

    def prefetch(self, waiting: list[Request]) -> None:
        """Warm RAM for the first queued requests (each once); the caller checks the link is up."""
        for request in waiting[:self.config.num_prefetch_requests]:
            if request.is_prefetched:
                continue
            num_full = (request.num_tokens - 1) // self.block_size
            extend_keys(request.block_keys, request.namespace, request.token_ids, self.block_size,
                        num_full)
            if num_full == 0 or self.prefetcher.submit(request.block_keys[:num_full]):
                request.is_prefetched = True

    # ---- stores --------------------------------------------------------------------------
    def queue_stores(self, block_ids: list[int], keys: list[bytes], is_urgent: bool = False) -> None:
        """Newly published full blocks (urgent: a preempted request's, to the head)."""
        if not self.link.is_up:
            return
        items = [(b, k) for b, k in zip(block_ids, keys)
                 if k not in self.queued_keys and k not in self.stored_keys]
        self.queued_keys.update(k for _, k in items)
        if is_urgent:
            self.store_queue.extendleft(reversed(items))
        else:
            self.store_queue.extend(items)
        while len(self.store_queue) > self.config.max_store_queue:
            self.queued_keys.discard(self.store_queue.popleft()[1])

    def on_preempt(self, request: Request) -> None:
        num_full = request.num_cached_blocks
        self.queue_stores(request.block_ids[:num_full], request.block_keys[:num_full], is_urgent=True)

    def _issue_stores(self) -> None:
        batch = []
        while self.store_queue and len(batch) < self.config.max_store_pages_per_step:
            block_id, key = self.store_queue.popleft()
            self.queued_keys.discard(key)
            if self.pool.block_keys[block_id] == key:   # else evicted before its turn: dropped
                batch.append((block_id, key))
        if not batch or not self.link.is_up:
            return
        lease = self.link.prepare_store([key for _, key in batch])
        if lease is None:
            return
        written = set(lease.key_indexes)
        self._remember([key for i, (_, key) in enumerate(batch) if i not in written])
        if not lease.slots:
            self.link.complete_store(lease.lease_id, True)
            return
        block_ids = [batch[i][0] for i in lease.key_indexes]
        self.pool.acquire(block_ids)
        entry = Storing(lease.lease_id, block_ids, [batch[i][1] for i in lease.key_indexes],
                        len(block_ids), time.perf_counter())
        for index, (block_id, slot) in enumerate(zip(block_ids, lease.slots)):
            self.pending_stores.append(self._move(entry, index, block_id, slot))

    def _remember(self, keys: list[bytes]) -> None:
        for key in keys:
            self.stored_keys[key] = None
        while len(self.stored_keys) > MAX_REMEMBERED_KEYS:
            self.stored_keys.popitem(last=False)

    # ---- plan and result -----------------------------------------------------------------
    def fill_plan(self, plan: executor_pb2.StepPlan) -> None:
        now = time.perf_counter()
        for move in self.pending_blocking_loads:
            self.in_flight[move.move_id][0].sent = now
        plan.loads.extend(self.pending_loads)
        plan.stores.extend(self.pending_stores)
        plan.blocking_loads.extend(self.pending_blocking_loads)
        self.pending_loads, self.pending_stores, self.pending_blocking_loads = [], [], []
        if self.in_flight:
            plan.wait_for_moves_s = WAIT_FOR_MOVES_SECONDS

    def apply(self, result: executor_pb2.StepResult) -> list[tuple[Request, int]]:
        """Account finished moves; returns (request, num_computed_tokens) of loads now complete."""
        if result.num_computed_tokens:
            self.policy.observe_prefill(result.num_computed_tokens, result.forward_seconds)
        ready = []
        for move_id, is_ok in [(m, True) for m in result.done_moves] + \
                              [(m, False) for m in result.failed_moves]:
            owner, index = self.in_flight.pop(move_id, (None, 0))
            if isinstance(owner, Loading):
                if not is_ok and (owner.first_failed is None or index < owner.first_failed):
                    owner.first_failed = index
                owner.num_pending -= 1
                if owner.num_pending == 0:
                    self._finish_load(owner, ready, result.blocking_load_seconds)
            elif isinstance(owner, Storing):
                owner.is_failed |= not is_ok
                owner.num_pending -= 1
                if owner.num_pending == 0:
                    self._finish_store(owner)
        return ready

    def _finish_load(self, entry: Loading, ready: list, blocking_load_seconds: float) -> None:
        self.link.complete_load(entry.lease_id)
        if entry.is_blocking:   # its pages were in place once the executor's wait ended
            self._publish(entry, len(entry.block_ids), entry.sent - entry.started + blocking_load_seconds)
            self.pool.release(reversed(entry.block_ids))
            return
        del self.loading[entry.request.request_id]
        if entry.is_aborted:
            self.pool.release(reversed(entry.held_block_ids))
            return
        num_ok = len(entry.block_ids) if entry.first_failed is None else entry.first_failed
        self._publish(entry, num_ok, time.perf_counter() - entry.started)
        ready.append((entry.request, (entry.first_index + num_ok) * self.block_size))

    def _publish(self, entry: Loading, num_ok: int, seconds: float) -> None:
        """Key the first num_ok loaded blocks in the prefix index (the rest failed); seconds: the
        load's latency, Lookup hit -> pages usable."""
        keys = entry.request.block_keys[entry.first_index:]
        for block_id, key in zip(entry.block_ids[:num_ok], keys):
            self.pool.cache_block(block_id, key)
        self.stats.on_load(entry.tiers[:num_ok], seconds)

    def _finish_store(self, entry: Storing) -> None:
        is_published = self.link.complete_store(entry.lease_id, not entry.is_failed)
        if is_published and not entry.is_failed:
            self._remember(entry.keys)
            self.stats.on_store(len(entry.block_ids), time.perf_counter() - entry.started)
        self.pool.release(entry.block_ids)

    # ---- aborts and resets ---------------------------------------------------------------
    def abort(self, request: Request) -> None:
        """A LOADING request is aborted: its blocks stay held until its copies are reported."""
        entry = self.loading[request.request_id]
        entry.is_aborted = True
        entry.held_block_ids, request.block_ids = request.block_ids, []

    def reset(self) -> list[Request]:
        """The executor lost every move in flight (it restarted, or Reset drained them): roll
        back leases, release blocks; returns the LOADING requests to queue again."""
        requeue = []
        owners = {id(owner): owner for owner, _ in self.in_flight.values()}
        for owner in owners.values():
            if isinstance(owner, Storing):
                owner.is_failed = True
                self._finish_store(owner)
            elif owner.is_blocking:   # its request is preempted by the caller
                self.link.complete_load(owner.lease_id)
                self.pool.release(reversed(owner.block_ids))
        for entry in list(self.loading.values()):
            del self.loading[entry.request.request_id]
            self.link.complete_load(entry.lease_id)
            held = entry.held_block_ids if entry.is_aborted else entry.request.block_ids
            self.pool.release(reversed(held))
            if not entry.is_aborted:
                entry.request.block_ids = []
                requeue.append(entry.request)
        self.in_flight.clear()
        self.pending_loads, self.pending_stores, self.pending_blocking_loads = [], [], []
        return requeue

    def close(self) -> None:
        self.prefetcher.close()
        self.link.close()

    def tier_stats(self) -> list:
        return self.stats.tier_stats(self.link.stats())

