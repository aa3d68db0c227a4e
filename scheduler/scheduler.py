"""Continuous batching: one token budget per step, running requests first, then admissions.

There is no prefill phase and no decode phase. Each request has num_computed_tokens and tries
to catch up with its known tokens (prompt + output): a decode is a catch-up of 1 token, a
prefill a catch-up of many, cut into chunks by the budget. When the pool runs short of blocks
the lowest-priority, newest running request is preempted (its blocks freed, recomputed later;
its full blocks usually stay in the prefix cache, so recompute is mostly a cache hit).
Below the device pool, `self.tiers` (host_tiers.py) loads and stores pages: the null tiers
when there is no kvstore.
"""
from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass
from typing import Callable

from protos.v1 import executor_pb2
from scheduler.block_hash import extend_keys
from scheduler.admission import admit, first_chunk
from scheduler.block_pool import BlockPool, num_blocks_for
from scheduler.host_tiers import HostTiers, NullHostTiers
from scheduler.metrics import SchedulerMetrics
from scheduler.outputs import RequestOutput, make_output
from scheduler.request import FinishReason, Request, RequestStatus
from scheduler.step_plan import ScheduledRequest, Step, build_plan
from scheduler.stopping import check_stop

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SchedulerConfig:
    block_size: int
    num_blocks: int
    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int
    eos_token_ids: frozenset[int] = frozenset()
    # False: no KV reuse at all (no device prefix hits, nothing published): every prompt token
    # is computed. The baseline that measures what reuse is worth; needs no kvstore.
    enable_prefix_caching: bool = True


@dataclass(slots=True)
class SchedulerCounters:
    prefix_cache_query_tokens: int = 0
    prefix_cache_hit_tokens: int = 0
    num_preemptions: int = 0
    num_finished_requests: int = 0
    num_steps: int = 0


class Scheduler:
    def __init__(self, config: SchedulerConfig,
                 make_tiers: Callable[..., HostTiers] = NullHostTiers):
        """make_tiers(pool, metrics=): the host tiers over this scheduler's block pool and
        metrics (host_tiers.py); the default has none: the device prefix cache alone."""
        self.config = config
        self.pool = BlockPool(config.num_blocks)
        self.metrics = SchedulerMetrics(self)
        self.tiers = make_tiers(self.pool, metrics=self.metrics)
        self.requests: dict[str, Request] = {}
        self.waiting: list[tuple[tuple[int, int], Request]] = []   # heap by sort_key
        self.running: list[Request] = []        # sorted by sort_key when is_running_sorted
        self.is_running_sorted = True
        self.finished_ids_to_send: list[str] = []
        self.counters = SchedulerCounters()
        self.num_waiting = 0
        self.step_id = 0
        self.is_preempted_this_step = False

    # ---- requests in and out -------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        assert request.request_id not in self.requests, request.request_id
        self.requests[request.request_id] = request
        self._push_waiting(request)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Finish a request wherever it is; None when it is unknown or already finished."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status is RequestStatus.LOADING:
            self.tiers.abort_load(request)
        self._finish(request, FinishReason.ABORT)
        return make_output(request, [], [])

    @property
    def has_work(self) -> bool:
        return bool(self.requests) or self.has_moves_in_flight

    @property
    def has_moves_in_flight(self) -> bool:
        return self.tiers.has_moves_in_flight

    @property
    def num_loading(self) -> int:
        return self.tiers.num_loading

    @property
    def num_running(self) -> int:
        return len(self.running)

    # ---- one step ------------------------------------------------------------------------
    def plan(self) -> Step:
        """Schedule this step and return the plan to send (mutates block tables)."""
        if not self.is_running_sorted:
            self.running.sort(key=Request.sort_key)
            self.is_running_sorted = True
        self.tiers.begin_step()
        scheduled: list[ScheduledRequest] = []
        budget = self._schedule_running(scheduled, self.config.max_num_batched_tokens)
        if not self.is_preempted_this_step:
            self._admit_waiting(scheduled, budget)
        self.step_id += 1
        plan = build_plan(self.step_id, scheduled, self.finished_ids_to_send, self.tiers.take_moves())
        self.finished_ids_to_send = []
        self.tiers.prefetch(self.waiting)
        return Step(plan, scheduled)

    def _schedule_running(self, scheduled: list[ScheduledRequest], budget: int) -> int:
        self.is_preempted_this_step = False
        running, index = self.running, 0
        block_size = self.config.block_size
        while index < len(running) and budget > 0 and len(scheduled) < self.config.max_num_seqs:
            request = running[index]
            num_tokens = min(len(request.token_ids) - request.num_computed_tokens, budget)
            if num_tokens <= 0:   # waits for a sampled token that never came: a bug, skip it
                index += 1
                continue
            num_end = request.num_computed_tokens + num_tokens
            if num_end > len(request.block_ids) * block_size:   # most decode steps need no block
                num_needed = num_blocks_for(num_end, block_size) - len(request.block_ids)
                if not self._make_room(request, num_needed):
                    break
                request.block_ids += self.pool.allocate(num_needed)
            scheduled.append((request, num_tokens))   # a ScheduledRequest; tuples are cheaper
            budget -= num_tokens
            index += 1
        return budget

    def _make_room(self, request: Request, num_needed: int) -> bool:
        """Preempt from the end of running until num_needed blocks are free; False when
        `request` itself had to go."""
        running = self.running
        while not self.pool.can_allocate(num_needed):
            # running is sorted, so its end is the lowest-priority, newest request.
            victim = running.pop()
            self._preempt(victim)
            if victim is request:
                return False
        return True

    def _admit_waiting(self, scheduled: list[ScheduledRequest], budget: int) -> None:
        config = self.config
        while self.waiting and budget > 0 and len(self.running) + self.num_loading < config.max_num_seqs \
                and len(scheduled) < config.max_num_seqs:
            request = self.waiting[0][1]
            if request.status is not RequestStatus.WAITING:   # aborted while waiting
                heapq.heappop(self.waiting)
                continue
            admission = admit(config, self.pool, self.tiers, request, budget)
            if admission is None:
                break   # strict order: nobody jumps the head of the queue
            heapq.heappop(self.waiting)
            self.num_waiting -= 1
            request.block_ids = admission.block_ids
            self.metrics.observe_scheduled(request)
            self.metrics.observe_device_hits(admission.num_device_hits)
            if admission.is_loading:
                request.status = RequestStatus.LOADING
                continue   # starts running once its pages are in (apply)
            budget -= self._run_admitted(request, scheduled, budget)

    def _run_admitted(self, request: Request, scheduled: list[ScheduledRequest], budget: int) -> int:
        """Start a request whose table holds exactly its computed prefix (device hits, and
        blocking-loaded blocks); admit checked the room. Returns the tokens scheduled."""
        num_computed_blocks = len(request.block_ids)
        num_tokens, num_table_blocks = first_chunk(self.config, request, num_computed_blocks, budget)
        request.block_ids += self.pool.allocate(num_table_blocks - num_computed_blocks)
        self._start_running(request, num_computed_blocks * self.config.block_size)
        scheduled.append(ScheduledRequest(request, num_tokens))
        return num_tokens

    def _start_running(self, request: Request, num_computed: int) -> None:
        request.status = RequestStatus.RUNNING
        request.num_computed_tokens = num_computed
        request.num_cached_blocks = num_computed // self.config.block_size
        request.num_blocks_sent = 0
        self.counters.prefix_cache_query_tokens += request.num_tokens
        self.counters.prefix_cache_hit_tokens += num_computed
        if request.num_cached_tokens is None:
            request.num_cached_tokens = min(num_computed, request.num_prompt_tokens)
        self.running.append(request)
        self.is_running_sorted = False

    # ---- results -------------------------------------------------------------------------
    def apply(self, step: Step, result: executor_pb2.StepResult) -> list[RequestOutput]:
        """Advance progress, publish newly full blocks, append sampled tokens, finish requests."""
        self.counters.num_steps += 1
        block_size = self.config.block_size
        for request, num_tokens in step.scheduled:
            if request.status is RequestStatus.RUNNING:
                request.num_computed_tokens += num_tokens
                if request.num_computed_tokens // block_size > request.num_cached_blocks:
                    self._cache_full_blocks(request)
        outputs = []
        for sampled in result.sampled:
            request = self.requests.get(sampled.request_id)
            if request is None or request.status is not RequestStatus.RUNNING:
                continue   # aborted while the step ran
            if request.num_computed_tokens != request.num_tokens:
                log.error("executor sampled %s before its prompt was computed", sampled.request_id)
                continue
            outputs.append(self._append_token(request, sampled))
        for request, num_computed in self.tiers.complete_moves(result):
            self._start_running(request, num_computed)   # LOADING -> RUNNING
        return outputs

    def _append_token(self, request: Request, sampled: executor_pb2.SampledToken) -> RequestOutput:
        token_id = sampled.token_id
        request.output_token_ids.append(token_id)
        request.token_ids.append(token_id)
        reason = check_stop(request, self.config.eos_token_ids, self.config.max_model_len)
        if reason is not None:
            self.running.remove(request)
            self._finish(request, reason)
        logprobs = [sampled.logprobs] if request.sampling.HasField("logprobs") else []
        return make_output(request, [token_id], logprobs)

    def _cache_full_blocks(self, request: Request) -> None:
        num_full_blocks = request.num_computed_tokens // self.config.block_size
        if num_full_blocks <= request.num_cached_blocks:
            return
        if not self.config.enable_prefix_caching:
            request.num_cached_blocks = num_full_blocks
            return
        extend_keys(request.block_keys, request.namespace, request.token_ids,
                    self.config.block_size, num_full_blocks)
        first = request.num_cached_blocks
        published = [index for index in range(first, num_full_blocks)
                     if self.pool.cache_block(request.block_ids[index], request.block_keys[index])]
        request.num_cached_blocks = num_full_blocks
        self.tiers.queue_stores(request, published)

    # ---- state changes -------------------------------------------------------------------
    def _push_waiting(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        heapq.heappush(self.waiting, (request.sort_key(), request))
        self.num_waiting += 1

    def _release_blocks(self, request: Request) -> None:
        self.pool.release(reversed(request.block_ids))
        request.block_ids = []
        request.num_computed_tokens = 0
        request.num_cached_blocks = 0
        if request.is_known_to_executor:
            self.finished_ids_to_send.append(request.request_id)
            request.is_known_to_executor = False

    def _preempt(self, request: Request) -> None:
        """Precondition: already removed from self.running."""
        self.tiers.queue_preempted(request)
        self._release_blocks(request)
        request.num_preemptions += 1
        self.counters.num_preemptions += 1
        self.is_preempted_this_step = True
        self._push_waiting(request)

    def preempt_all(self) -> None:
        """Send every running request back to waiting (the executor lost or forgot them). The
        device prefix index is forgotten too: a restarted executor's pool holds none of it."""
        for request in self.running:
            self._preempt(request)
        self.running = []
        self.tiers.reset(self._requeue_loading)
        self.pool.reset_prefix_cache()
        self.finished_ids_to_send = []

    def _requeue_loading(self, request: Request) -> None:
        """A LOADING request whose copies were lost waits again (to load or recompute)."""
        self._release_blocks(request)
        request.num_preemptions += 1
        self._push_waiting(request)

    def _finish(self, request: Request, reason: FinishReason) -> None:
        if request.status is RequestStatus.WAITING:
            self.num_waiting -= 1   # its heap entry is skipped lazily
        self._release_blocks(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        del self.requests[request.request_id]
        self.counters.num_finished_requests += 1
