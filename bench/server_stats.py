"""Server-side counters of one run: the difference of GetStats taken before and after it."""
from __future__ import annotations

from protos.v1 import generation_pb2

TIER_COUNTERS = ("num_hits", "num_misses", "bytes_loaded", "bytes_stored")


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def tier_deltas(before: generation_pb2.Stats, after: generation_pb2.Stats) -> list[dict]:
    """Per tier: counter deltas, hit rate (hits / lookups in this run), and the end state.
    A tier that appears only after the run starts from zero."""
    previous = {tier.tier: tier for tier in before.tiers}
    tiers = []
    for tier in after.tiers:
        start = previous.get(tier.tier, generation_pb2.TierStats())
        delta = {name: getattr(tier, name) - getattr(start, name) for name in TIER_COUNTERS}
        tiers.append({"tier": tier.tier, **delta,
                      "hit_rate": _ratio(delta["num_hits"], delta["num_hits"] + delta["num_misses"]),
                      "num_pages": tier.num_pages, "num_bytes": tier.num_bytes,
                      "load_latency_ms_p50": tier.load_latency_ms_p50,
                      "store_latency_ms_p50": tier.store_latency_ms_p50})
    return tiers


def server_metrics(before: generation_pb2.Stats | None, after: generation_pb2.Stats | None) -> dict:
    """num_preemptions, prefix-cache hit rate, steps and tiers over the run; None values when
    the server did not answer GetStats."""
    if before is None or after is None:
        return {"num_preemptions": None, "prefix_cache_hit_rate": None, "num_steps": None,
                "tiers": [], "is_integrity_ok": None}
    queried = after.prefix_cache_query_tokens - before.prefix_cache_query_tokens
    hits = after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens
    return {"num_preemptions": after.num_preemptions - before.num_preemptions,
            "prefix_cache_hit_rate": _ratio(hits, queried),
            "prefix_cache_query_tokens": queried,
            "prefix_cache_hit_tokens": hits,
            "num_steps": after.num_steps - before.num_steps,
            "num_device_blocks": after.num_device_blocks,
            "tiers": tier_deltas(before, after),
            "is_integrity_ok": after.is_integrity_ok}
