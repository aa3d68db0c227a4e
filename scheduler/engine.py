"""The engine loop: its own thread, one plan -> Step -> apply per iteration.

gRPC handlers never touch the scheduler. They hand requests and aborts over through `inbox`
(thread-safe) and read their RequestStream; only this thread mutates scheduler state.
"""
from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from typing import Callable, Protocol

import grpc

from protos.v1 import executor_pb2, generation_pb2
from scheduler.errors import AlreadyExists, ResourceExhausted
from scheduler.outputs import RequestOutput
from scheduler.request import Request
from scheduler.scheduler import Scheduler
from scheduler.streams import RequestStream

log = logging.getLogger(__name__)

IDLE_WAIT_SECONDS = 0.5
# A request in this many failed executor steps is aborted: an executor that fails the same work
# every time (a bug, not a crash) must not keep it re-admitted forever.
MAX_FAILED_STEPS_PER_REQUEST = 3


class StepFunction(Protocol):
    def __call__(self, plan: executor_pb2.StepPlan) -> executor_pb2.StepResult: ...


class Abort:
    __slots__ = ("request",)

    def __init__(self, request: Request):
        self.request = request


class Engine:
    def __init__(self, scheduler: Scheduler, step: StepFunction, tokenizer, max_waiting: int,
                 on_executor_lost: Callable[[], None] | None = None):
        """on_executor_lost: called in the engine thread when a Step fails for a reason other
        than a bad plan; it returns once the executor is back and Reset (or raises to stop)."""
        self.scheduler = scheduler
        self.step = step
        self.tokenizer = tokenizer
        self.max_waiting = max_waiting
        self.on_executor_lost = on_executor_lost
        self.inbox: queue.SimpleQueue[Request | Abort | None] = queue.SimpleQueue()
        self.streams: dict[str, RequestStream] = {}
        self.lock = threading.Lock()
        self.is_stopping = False
        self.is_integrity_ok = True
        self.is_idle_checked = False
        self.thread = threading.Thread(target=self._loop, name="engine", daemon=True)

    # ---- handler threads -----------------------------------------------------------------
    def submit(self, request: Request) -> RequestStream:
        """Queue a validated request; raises AlreadyExists / ResourceExhausted."""
        stream = RequestStream(request, self.tokenizer, functools.partial(self.abort, request))
        with self.lock:
            if request.request_id in self.streams:
                raise AlreadyExists(f"request_id {request.request_id!r} is already in flight: "
                                    "use a unique id or leave it empty")
            num_waiting = self.scheduler.num_waiting + self.inbox.qsize()
            if num_waiting >= self.max_waiting:
                raise ResourceExhausted(f"{num_waiting} requests are already waiting (limit "
                                        f"{self.max_waiting}): retry later")
            self.streams[request.request_id] = stream
        self.inbox.put(request)
        return stream

    def abort(self, request: Request) -> None:
        """Abort at the next step boundary (no-op when it already finished)."""
        self.inbox.put(Abort(request))

    def start(self) -> None:
        self.thread.start()

    def shutdown(self) -> None:
        self.is_stopping = True
        self.inbox.put(None)
        self.thread.join(timeout=30)
        for request in list(self.scheduler.requests.values()):
            self._dispatch([self.scheduler.abort_request(request.request_id)])

    # ---- engine thread -------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.is_stopping:
            self._drain_inbox(is_blocking=not self.scheduler.has_work)
            if self.scheduler.has_work and not self.is_stopping:
                self._run_step()

    def _drain_inbox(self, is_blocking: bool) -> None:
        if is_blocking:
            if not self.is_idle_checked:   # once per idle period: it walks every block
                self.is_integrity_ok = self.scheduler.pool.check_integrity()
                self.is_idle_checked = True
                if not self.is_integrity_ok:
                    log.error("block pool integrity check failed while idle")
            try:
                self._handle(self.inbox.get(timeout=IDLE_WAIT_SECONDS))
            except queue.Empty:
                return
        while True:
            try:
                self._handle(self.inbox.get_nowait())
            except queue.Empty:
                return

    def _handle(self, item: Request | Abort | None) -> None:
        if isinstance(item, Request):
            self.scheduler.add_request(item)
            self.is_idle_checked = False
        elif isinstance(item, Abort):
            if self.scheduler.requests.get(item.request.request_id) is item.request:
                self._dispatch([self.scheduler.abort_request(item.request.request_id)])

    def _run_step(self) -> None:
        step = self.scheduler.plan()
        # A plan's page moves are in flight from the moment it is built.
        if not step.scheduled and not self.scheduler.has_moves_in_flight:
            # Nothing fits this step; keep the finished ids for the next real plan.
            self.scheduler.finished_ids_to_send[:0] = step.plan.finished_request_ids
            self._drain_inbox(is_blocking=True)
            return
        try:
            result = self.step(step.plan)
        except grpc.RpcError as error:
            self._handle_step_error(step, error)
            return
        self._dispatch(self.scheduler.apply(step, result))

    def _handle_step_error(self, step, error: grpc.RpcError) -> None:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            # A scheduler bug: drop the requests of that plan, resync the executor, keep serving.
            log.error("executor rejected plan %d: %s; aborting its %d requests", step.plan.step_id,
                      error.details(), len(step.scheduled))
            doomed = [request for request, _ in step.scheduled]
        else:
            log.error("executor step failed (%s: %s); re-admitting running requests",
                      error.code(), error.details())
            doomed = []
            for request, _ in step.scheduled:
                request.num_failed_steps += 1
                if request.num_failed_steps >= MAX_FAILED_STEPS_PER_REQUEST:
                    log.error("aborting %s: it was in %d failed executor steps", request.request_id,
                              request.num_failed_steps)
                    doomed.append(request)
        # Back (and Reset: page copies drained) before blocks and kvstore slots are given back.
        if self.on_executor_lost is not None:
            self.on_executor_lost()
        for request in doomed:
            self._dispatch([self.scheduler.abort_request(request.request_id)])
        self.scheduler.preempt_all()

    def _dispatch(self, outputs: list[RequestOutput | None]) -> None:
        streams, metrics, now = self.streams, self.scheduler.metrics, time.monotonic()
        for output in outputs:
            if output is None:
                continue
            stream = streams.get(output.request_id)
            if stream is None:
                continue
            metrics.observe_output(stream.request, output, stream.is_stop_string_found, now)
            stream.put(output)
            if output.is_final:
                with self.lock:
                    del streams[output.request_id]

    # ---- any thread ----------------------------------------------------------------------
    def stats(self) -> generation_pb2.Stats:
        scheduler, counters = self.scheduler, self.scheduler.counters
        return generation_pb2.Stats(
            num_running=scheduler.num_running, num_waiting=scheduler.num_waiting,
            num_loading=scheduler.num_loading, num_device_blocks=scheduler.pool.num_blocks,
            tiers=scheduler.tiers.tier_stats(),
            num_free_device_blocks=scheduler.pool.num_free_blocks,
            prefix_cache_query_tokens=counters.prefix_cache_query_tokens,
            prefix_cache_hit_tokens=counters.prefix_cache_hit_tokens,
            num_preemptions=counters.num_preemptions,
            num_finished_requests=counters.num_finished_requests,
            num_steps=counters.num_steps, is_integrity_ok=self.is_integrity_ok)

    def metrics_text(self) -> str:
        """GetMetrics: the scheduler's Prometheus text, then its kvstore's (asked now)."""
        return self.scheduler.metrics.text() + self.scheduler.tiers.kvstore_metrics()
