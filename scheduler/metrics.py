"""The scheduler's Prometheus metrics (Generation.GetMetrics): vLLM's names under `strata:`.

Two kinds:

    state    what the Scheduler already keeps (queue lengths, the block pool, SchedulerCounters)
             is read at scrape time by SchedulerCollector, on the handler thread: not counted twice
    events   the rest (tokens, finished requests by reason, latencies, page loads and stores by
             tier) is observed where it happens: the engine thread calls the observe_* methods,
             a few prometheus_client calls per step and per request and no lock of ours. Token
             counts are plain ints (TokenCollector); page loads and stores are observed in the
             same OffloadStats call that counts them for GetStats, so the two never disagree

Each Scheduler has its own CollectorRegistry (never prometheus_client's global one), so two
schedulers in one process (tests) never share a series. Times are time.monotonic() seconds.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from scheduler.outputs import RequestOutput
from scheduler.request import FinishReason, Request

if TYPE_CHECKING:
    from scheduler.scheduler import Scheduler

PREFIX = "strata:"
TIERS = ("device", "ram", "disk", "remote")
# vLLM's buckets (vllm/v1/metrics/loggers.py), so dashboards built for vLLM read the same.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# A RAM page copy takes microseconds, an NVMe or remote load milliseconds to seconds.
KV_LOAD_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
KVSTORE_UP = "strata:kvstore_up"


class SchedulerMetrics:
    """The event metrics of one scheduler and the registry its GetMetrics renders."""

    def __init__(self, scheduler: "Scheduler | None" = None):
        """scheduler: its state is collected at scrape time (None: events only)."""
        self.registry = registry = CollectorRegistry()
        self.block_size = scheduler.config.block_size if scheduler is not None else 0
        # Plain ints the engine thread adds to (once per output: no lock), read at scrape time.
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        success = Counter(PREFIX + "request_success", "Finished requests, by the finish reason "
                          "their client saw.", ["finished_reason"], registry=registry)
        self.request_success = {reason.value: success.labels(reason.value)
                                for reason in FinishReason}
        self.time_to_first_token = Histogram(
            PREFIX + "time_to_first_token_seconds", "Arrival to first token.",
            buckets=TTFT_BUCKETS, registry=registry)
        self.inter_token_latency = Histogram(
            PREFIX + "inter_token_latency_seconds", "Time between two tokens of a request.",
            buckets=ITL_BUCKETS, registry=registry)
        self.e2e_request_latency = Histogram(
            PREFIX + "e2e_request_latency_seconds", "Arrival to the final output.",
            buckets=REQUEST_BUCKETS, registry=registry)
        self.request_queue_time = Histogram(
            PREFIX + "request_queue_time_seconds", "Arrival to first admission (running or "
            "loading).", buckets=REQUEST_BUCKETS, registry=registry)
        self._init_tier_metrics(registry)
        registry.register(TokenCollector(self))
        if scheduler is not None:
            registry.register(SchedulerCollector(scheduler))

    def _init_tier_metrics(self, registry: CollectorRegistry) -> None:
        cached = Counter(PREFIX + "cached_tokens", "Prompt tokens whose KV was reused, by the tier "
                         "it came from (device: prefix hits at admission).", ["tier"],
                         registry=registry)
        loaded = Counter(PREFIX + "kv_tier_load_bytes", "Bytes loaded into the device pool, by "
                         "source tier.", ["tier"], registry=registry)
        stored = Counter(PREFIX + "kv_tier_store_bytes", "Bytes stored from the device pool, by "
                         "destination tier (stores land in RAM).", ["tier"], registry=registry)
        load_seconds = Histogram(PREFIX + "kv_load_seconds", "One load: Lookup hit to pages usable "
                                 "in device blocks, by its slowest source tier.", ["tier"],
                                 buckets=KV_LOAD_BUCKETS, registry=registry)
        self.cached_tokens = {tier: cached.labels(tier) for tier in TIERS}
        self.kv_tier_load_bytes = {tier: loaded.labels(tier) for tier in TIERS[1:]}
        self.kv_tier_store_bytes = {"ram": stored.labels("ram")}   # the only tier stores land in
        self.kv_load_seconds = {tier: load_seconds.labels(tier) for tier in TIERS[1:]}

    # ---- engine thread -------------------------------------------------------------------
    def observe_scheduled(self, request: Request) -> None:
        """request was admitted (to run, or to wait for its loads); its queue time once."""
        times = request.times
        if times.first_scheduled is None:
            times.first_scheduled = time.monotonic()
            self.request_queue_time.observe(times.first_scheduled - times.arrival)

    def observe_device_hits(self, num_blocks: int) -> None:
        if num_blocks:
            self.cached_tokens["device"].inc(num_blocks * self.block_size)

    def observe_output(self, request: Request, output: RequestOutput, is_stop_string: bool,
                       now: float) -> None:
        """Before the output reaches its stream, so a client that saw it can scrape it.
        is_stop_string: the handler found a stop string, so the client sees STOP whatever the
        engine's reason (a stop string found after the final output was dispatched is missed)."""
        times = request.times
        if output.token_ids:
            self.num_generation_tokens += len(output.token_ids)
            if times.first_token is None:
                times.first_token = now
                self.time_to_first_token.observe(now - times.arrival)
                self.num_prompt_tokens += request.num_prompt_tokens
            else:
                self.inter_token_latency.observe(now - times.last_token)
            times.last_token = now
        if output.finish_reason is not None:
            reason = FinishReason.STOP if is_stop_string else output.finish_reason
            self.request_success[reason.value].inc()
            self.e2e_request_latency.observe(now - times.arrival)

    def observe_kv_load(self, tiers: list[str], page_bytes: int, seconds: float) -> None:
        """One finished load: the source tier of each page now usable (its latency is filed
        under the slowest of them)."""
        num_pages = dict.fromkeys(tiers, 0)
        for tier in tiers:   # ints first: two prometheus_client calls per tier, not per page
            num_pages[tier] += 1
        for tier, num in num_pages.items():
            self.cached_tokens[tier].inc(num * self.block_size)
            self.kv_tier_load_bytes[tier].inc(num * page_bytes)
        if tiers:
            self.kv_load_seconds[max(tiers, key=TIERS.index)].observe(seconds)

    def observe_kv_store(self, num_pages: int, page_bytes: int) -> None:
        self.kv_tier_store_bytes["ram"].inc(num_pages * page_bytes)

    # ---- any thread ----------------------------------------------------------------------
    def text(self) -> str:
        """Prometheus text format 0.0.4 of this registry."""
        return generate_latest(self.registry).decode()


class TokenCollector:
    """The token counters of SchedulerMetrics (ints: a torn read is one output stale)."""

    def __init__(self, metrics: SchedulerMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(PREFIX + "prompt_tokens", "Prompt tokens of requests that "
                                  "produced their first token.",
                                  value=self.metrics.num_prompt_tokens)
        yield CounterMetricFamily(PREFIX + "generation_tokens", "Tokens generated.",
                                  value=self.metrics.num_generation_tokens)


class SchedulerCollector:
    """Gauges and counters the Scheduler keeps anyway, read at scrape time (ints and lengths the
    engine thread writes: a torn read is one step stale, never wrong)."""

    def __init__(self, scheduler: "Scheduler"):
        self.scheduler = scheduler

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        scheduler, counters = self.scheduler, self.scheduler.counters
        pool = scheduler.pool
        yield GaugeMetricFamily(PREFIX + "num_requests_running", "Requests in the running batch.",
                                value=scheduler.num_running)
        yield GaugeMetricFamily(PREFIX + "num_requests_waiting", "Requests waiting for admission "
                                "(new or preempted).", value=scheduler.num_waiting)
        yield GaugeMetricFamily(PREFIX + "num_requests_loading", "Requests waiting for their "
                                "pages to load from a kvstore tier.", value=scheduler.num_loading)
        yield GaugeMetricFamily(PREFIX + "kv_cache_usage_perc", "Fraction of device blocks in use "
                                "(0..1; cached unused blocks count as free).",
                                value=1.0 - pool.num_free_blocks / pool.num_blocks)
        yield CounterMetricFamily(PREFIX + "num_preemptions", "Preemptions.",
                                  value=counters.num_preemptions)
        yield CounterMetricFamily(PREFIX + "prefix_cache_queries", "Prompt tokens looked up in the "
                                  "prefix cache (every tier), at each admission.",
                                  value=counters.prefix_cache_query_tokens)
        yield CounterMetricFamily(PREFIX + "prefix_cache_hits", "Of those, tokens whose KV was "
                                  "reused (device hits and kvstore loads).",
                                  value=counters.prefix_cache_hit_tokens)


def kvstore_text(text: str | None) -> str:
    """The kvstore's part of GetMetrics: its own text and strata:kvstore_up (text None: it did
    not answer, so only strata:kvstore_up 0)."""
    return (text or "") + (f"# HELP {KVSTORE_UP} Whether the kvstore answered its GetMetrics.\n"
                           f"# TYPE {KVSTORE_UP} gauge\n{KVSTORE_UP} {int(text is not None)}.0\n")
