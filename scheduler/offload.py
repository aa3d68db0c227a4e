"""KVStoreTiers: the host tiers (host_tiers.py) of a kvstore, its pages riding on step plans.

Mechanism only; the decisions are LoadPolicy (load or recompute) and Prefetcher (offload_policy.py)
and the store rule of StoreQueue (offload_stores.py: every newly full block once, within a
per-step budget).

    admission   device prefix hit, then Lookup the rest: PrepareLoad leases the pages, fresh
                blocks are allocated; RAM pages land before the forward of the admitting step,
                others make the request wait in LOADING while the executor copies them
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

import heapq
import time
from dataclasses import dataclass
from typing import Callable

from protos.v1 import executor_pb2
from protos.v1 import kvstore_pb2 as pb
from runtime.kvstore_client import ArenaLayout
from scheduler.block_hash import extend_keys
from scheduler.block_pool import BlockPool
from scheduler.host_tiers import NO_HIT, HostHit, HostTiers, PageMoves, ReadyLoad, StartedLoad
from scheduler.kv_link import KVStoreLink
from scheduler.metrics import SchedulerMetrics, kvstore_text
from scheduler.offload_moves import Loading, MoveLedger, Storing
from scheduler.offload_policy import LoadPolicy, Prefetcher
from scheduler.offload_stats import OffloadStats
from scheduler.offload_stores import StoreQueue
from scheduler.request import Request, RequestStatus

NOT_STARTED = StartedLoad([], False)


@dataclass(slots=True)
class OffloadConfig:
    max_store_pages_per_step: int = 256
    max_store_queue: int = 8192
    num_prefetch_requests: int = 8
    # RAM pages are copied before the forward of the step that admits the request (a page copy
    # takes microseconds, a step up to seconds); NVMe/remote pages go through LOADING.
    is_ram_load_blocking: bool = True
    is_always_load: bool = False     # load every kvstore hit, whatever the cost model says


class KVStoreTiers(HostTiers):
    def __init__(self, pool: BlockPool, link: KVStoreLink, block_size: int, page_bytes: int,
                 map_arena: Callable[[ArenaLayout], bool], config: OffloadConfig | None = None,
                 metrics: SchedulerMetrics | None = None):
        """map_arena: asks the executor to map a kvstore arena (engine thread); False on failure.
        metrics: the scheduler's (None: a private one nobody reads)."""
        self.pool, self.link, self.block_size = pool, link, block_size
        self.map_arena = map_arena
        self.config = config or OffloadConfig()
        self.policy = LoadPolicy(page_bytes, block_size, self.config.is_always_load)
        self.prefetcher = Prefetcher(link)
        self.stats = OffloadStats(page_bytes, metrics or SchedulerMetrics())
        self.stores = StoreQueue(pool, self.config.max_store_queue)
        self.moves = MoveLedger()
        self.loading: dict[str, Loading] = {}

    @property
    def num_loading(self) -> int:
        return len(self.loading)

    @property
    def has_moves_in_flight(self) -> bool:
        return not self.moves.is_empty

    def begin_step(self) -> None:
        layout = self.link.take_registered()
        if layout is not None and self.map_arena(layout):
            self.stores.forget_stored()   # maybe a new kvstore: what the old one held is gone
            self.link.set_up(layout)
        if self.stores.has_queued:
            self._issue_stores()

    def remap_arena(self) -> None:
        if self.link.is_up and not self.map_arena(self.link.layout):
            self.link.mark_down("the executor cannot map its arena")

    # ---- loads ---------------------------------------------------------------------------
    def lookup(self, request: Request, num_hits: int, num_full_blocks: int) -> HostHit:
        if num_hits >= num_full_blocks or not self.link.is_up:
            return NO_HIT
        keys = request.block_keys[num_hits:num_full_blocks]
        tiers = self.link.lookup(keys)
        num_load = self.policy.num_to_load(tiers) if tiers else 0
        if num_load == 0:
            self.stats.num_lookup_pages += len(keys)
            return NO_HIT
        return HostHit(num_load, num_hits, keys, tiers[:num_load])

    def start_load(self, request: Request, hit: HostHit) -> StartedLoad:
        self.stats.num_lookup_pages += len(hit.keys)   # counted once admitted: a blocked one asks again
        started = time.perf_counter()
        lease = self.link.prepare_load(hit.keys[:hit.num_blocks])
        if lease is None or not lease.slots:
            if lease is not None:
                self.link.complete_load(lease.lease_id)
            return NOT_STARTED
        tiers = hit.tiers[:len(lease.slots)]
        self.policy.observe_prepare(max(tiers), len(tiers), time.perf_counter() - started)
        is_blocking = self.config.is_ram_load_blocking and all(t == pb.TIER_RAM for t in tiers)
        block_ids = self.pool.allocate(len(tiers))
        entry = Loading(request, lease.lease_id, hit.first_index, block_ids, tiers, len(block_ids),
                        started, is_blocking=is_blocking)
        if is_blocking:
            self.pool.acquire(block_ids)   # held until the copies are reported, even on abort
            moves = self.moves.queued.blocking_loads
        else:
            self.loading[request.request_id] = entry
            moves = self.moves.queued.loads
        self.moves.add(moves, entry, block_ids, lease.slots, self.link.layout.arena_id)
        return StartedLoad(block_ids, not is_blocking)

    def prefetch(self, waiting: list[tuple[tuple[int, int], Request]]) -> None:
        """Each request once (is_prefetched) while the link is up."""
        if not waiting or not self.link.is_up:
            return
        for _, request in heapq.nsmallest(self.config.num_prefetch_requests, waiting):
            if request.status is not RequestStatus.WAITING or request.is_prefetched:
                continue
            num_full = (request.num_tokens - 1) // self.block_size
            extend_keys(request.block_keys, request.namespace, request.token_ids, self.block_size,
                        num_full)
            if num_full == 0 or self.prefetcher.submit(request.block_keys[:num_full]):
                request.is_prefetched = True

    # ---- stores --------------------------------------------------------------------------
    def queue_stores(self, request: Request, indexes: list[int]) -> None:
        if self.link.is_up:
            self.stores.push([(request.block_ids[i], request.block_keys[i]) for i in indexes])

    def queue_preempted(self, request: Request) -> None:
        if self.link.is_up:
            num_full = request.num_cached_blocks
            self.stores.push_front(list(zip(request.block_ids[:num_full],
                                            request.block_keys[:num_full])))

    def _issue_stores(self) -> None:
        batch = self.stores.take_batch(self.config.max_store_pages_per_step)
        if not batch or not self.link.is_up:
            return
        lease = self.link.prepare_store([key for _, key in batch])
        if lease is None:
            return
        written = set(lease.key_indexes)
        self.stores.remember([key for i, (_, key) in enumerate(batch) if i not in written])
        if not lease.slots:
            self.link.complete_store(lease.lease_id, True)
            return
        block_ids = [batch[i][0] for i in lease.key_indexes]
        self.pool.acquire(block_ids)
        entry = Storing(lease.lease_id, block_ids, [batch[i][1] for i in lease.key_indexes],
                        len(block_ids), time.perf_counter())
        self.moves.add(self.moves.queued.stores, entry, block_ids, lease.slots,
                       self.link.layout.arena_id)

    # ---- plan and result -----------------------------------------------------------------
    def take_moves(self) -> PageMoves:
        return self.moves.take()

    def complete_moves(self, result: executor_pb2.StepResult) -> list[ReadyLoad]:
        if result.num_computed_tokens:
            self.policy.observe_prefill(result.num_computed_tokens, result.forward_seconds)
        ready = []
        for move_id, is_ok in [(m, True) for m in result.done_moves] + \
                              [(m, False) for m in result.failed_moves]:
            owner, index = self.moves.pop(move_id)
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

    def _finish_load(self, entry: Loading, ready: list[ReadyLoad], blocking_load_seconds: float) -> None:
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
        ready.append(ReadyLoad(entry.request, (entry.first_index + num_ok) * self.block_size))

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
            self.stores.remember(entry.keys)
            self.stats.on_store(len(entry.block_ids), time.perf_counter() - entry.started)
        self.pool.release(entry.block_ids)

    # ---- aborts and resets ---------------------------------------------------------------
    def abort_load(self, request: Request) -> None:
        entry = self.loading[request.request_id]
        entry.is_aborted = True
        entry.held_block_ids = list(request.block_ids)
        self.pool.acquire(entry.held_block_ids)

    def reset(self, requeue: Callable[[Request], None]) -> None:
        for owner in self.moves.owners():
            if isinstance(owner, Storing):
                owner.is_failed = True
                self._finish_store(owner)
            elif owner.is_blocking:   # its request is preempted by the caller
                self.link.complete_load(owner.lease_id)
                self.pool.release(reversed(owner.block_ids))
        for entry in self.loading.values():
            self.link.complete_load(entry.lease_id)
            if entry.is_aborted:
                self.pool.release(reversed(entry.held_block_ids))
            else:
                requeue(entry.request)
        self.loading.clear()
        self.moves.clear()

    def close(self) -> None:
        self.prefetcher.close()
        self.link.close()

    def tier_stats(self) -> list:
        return self.stats.tier_stats(self.link.stats())

    def kvstore_metrics(self) -> str:
        return kvstore_text(self.link.metrics_text())
