"""Serving metrics from per-request timestamps: pure arithmetic, no I/O.

A request's trace is the send time plus one arrival time per streamed response and how many
tokens each response carried. Every latency below is derived from that trace:

    send ──────── r0 ──── r1 ──── r2 ────────── r3 (last)
         <- TTFT ->   gap1    gap2      gap3
         <───────────────── e2e ──────────────────>

- TTFT: send -> first response that carries at least one token.
- e2e: send -> last response (the stream's end, when the client has everything).
- TPOT: (e2e - TTFT) / (output_tokens - 1); undefined (excluded) when output_tokens == 1.
- ITL: the gap between successive token-carrying responses. A response with k tokens after a
  gap g contributes k values g / k, so every token after the first response gets one ITL value
  and a server that batches tokens into one message is not rewarded with a few huge gaps.
  Extra tokens inside the first response have no observable gap and get no ITL value.
- Percentiles interpolate linearly between order statistics (numpy's default method).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


@dataclass(slots=True)
class RequestTrace:
    """What the client observed for one request. Times are seconds on one monotonic clock."""
    send_time: float
    response_times: list[float] = field(default_factory=list)
    tokens_per_response: list[int] = field(default_factory=list)
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    turn: int = 0
    error: str | None = None

    @property
    def num_output_tokens(self) -> int:
        return sum(self.tokens_per_response)

    @property
    def is_ok(self) -> bool:
        return self.error is None and self.num_output_tokens > 0


class LatencySummary(NamedTuple):
    mean: float
    p50: float
    p90: float
    p99: float

    def as_dict(self) -> dict[str, float]:
        return self._asdict()


class Slo(NamedTuple):
    """Service-level objective in milliseconds; None: not constrained."""
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None


def summarize(values: list[float]) -> LatencySummary | None:
    """Mean and linear-interpolated p50/p90/p99; None for no values."""
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(array, [50, 90, 99])
    return LatencySummary(float(array.mean()), float(p50), float(p90), float(p99))


def ttft_s(trace: RequestTrace) -> float | None:
    for time, num_tokens in zip(trace.response_times, trace.tokens_per_response):
        if num_tokens > 0:
            return time - trace.send_time
    return None


def e2e_s(trace: RequestTrace) -> float | None:
    return trace.response_times[-1] - trace.send_time if trace.response_times else None


def tpot_s(trace: RequestTrace) -> float | None:
    first, total, num_tokens = ttft_s(trace), e2e_s(trace), trace.num_output_tokens
    if first is None or total is None or num_tokens < 2:
        return None
    return (total - first) / (num_tokens - 1)


def itls_s(trace: RequestTrace) -> list[float]:
    arrivals = [(t, k) for t, k in zip(trace.response_times, trace.tokens_per_response) if k > 0]
    gaps: list[float] = []
    for (previous, _), (time, num_tokens) in zip(arrivals, arrivals[1:]):
        gaps.extend([(time - previous) / num_tokens] * num_tokens)
    return gaps


def meets_slo(trace: RequestTrace, slo: Slo) -> bool:
    """True when every constrained latency of an ok request is within its bound.
    A request whose TPOT is undefined (1 output token) passes the TPOT bound."""
    if not trace.is_ok:
        return False
    checks = ((slo.ttft_ms, ttft_s(trace)), (slo.tpot_ms, tpot_s(trace)), (slo.e2e_ms, e2e_s(trace)))
    return all(bound is None or value is None or value * 1e3 <= bound for bound, value in checks)


def _ms(values: list[float]) -> dict[str, float] | None:
    summary = summarize([v * 1e3 for v in values])
    return None if summary is None else summary.as_dict()


def latency_metrics(traces: list[RequestTrace]) -> dict[str, dict[str, float] | None]:
    """TTFT, TPOT, ITL and e2e (ms: mean/p50/p90/p99) over the ok traces."""
    ok = [t for t in traces if t.is_ok]
    return {
        "ttft_ms": _ms([v for v in map(ttft_s, ok) if v is not None]),
        "tpot_ms": _ms([v for v in map(tpot_s, ok) if v is not None]),
        "itl_ms": _ms([gap for t in ok for gap in itls_s(t)]),
        "e2e_latency_ms": _ms([v for v in map(e2e_s, ok) if v is not None]),
    }


def throughput_metrics(traces: list[RequestTrace], duration_s: float) -> dict[str, float]:
    """Per-second rates over the whole run's wall time; failed requests count as no tokens."""
    ok = [t for t in traces if t.is_ok]
    num_input = sum(t.num_prompt_tokens for t in ok)
    num_output = sum(t.num_output_tokens for t in ok)
    return {
        "request_throughput_req_s": len(ok) / duration_s,
        "input_throughput_tok_s": num_input / duration_s,
        "output_throughput_tok_s": num_output / duration_s,
        "total_throughput_tok_s": (num_input + num_output) / duration_s,
        "num_input_tokens": num_input,
        "num_output_tokens": num_output,
    }


def offline_metrics(num_requests: int, num_input: int, num_output: int, duration_s: float) -> dict:
    """The throughput fields of a baseline that sees no stream (a whole batch returns at
    once): latencies are not observable and are None."""
    return {"num_completed": num_requests, "num_failed": 0, "duration_s": duration_s,
            "request_throughput_req_s": num_requests / duration_s,
            "input_throughput_tok_s": num_input / duration_s,
            "output_throughput_tok_s": num_output / duration_s,
            "total_throughput_tok_s": (num_input + num_output) / duration_s,
            "num_input_tokens": num_input, "num_output_tokens": num_output,
            "ttft_ms": None, "tpot_ms": None, "itl_ms": None, "e2e_latency_ms": None}


def cached_token_fraction(traces: list[RequestTrace]) -> float | None:
    """Prompt tokens served from a cache (Usage.cached_tokens) over all prompt tokens."""
    ok = [t for t in traces if t.is_ok]
    num_prompt = sum(t.num_prompt_tokens for t in ok)
    return sum(t.num_cached_tokens for t in ok) / num_prompt if num_prompt else None


def goodput_req_s(traces: list[RequestTrace], duration_s: float, slo: Slo) -> float:
    return sum(meets_slo(t, slo) for t in traces) / duration_s


def ttft_by_turn(traces: list[RequestTrace]) -> dict[str, dict[str, float] | None]:
    """TTFT summary per turn index (multi-turn workloads), keys are the turn as a string."""
    turns = sorted({t.turn for t in traces if t.is_ok})
    return {str(turn): _ms([v for t in traces if t.is_ok and t.turn == turn
                            for v in [ttft_s(t)] if v is not None]) for turn in turns}


def turn_wall_metrics(turn_wall_s: list[float]) -> dict:
    """Each turn's wall time (a run where turn t of every session starts together once turn t-1
    has ended) and `later_turns_wall_s`, the sum over turns 2..T (None with one turn): the
    turns that can reuse earlier turns' KV."""
    return {"turn_wall_s": list(turn_wall_s),
            "later_turns_wall_s": sum(turn_wall_s[1:]) if len(turn_wall_s) > 1 else None}


def run_metrics(traces: list[RequestTrace], duration_s: float, slo: Slo | None) -> dict:
    """Every client-side metric of one run (the JSON per configuration, minus server stats)."""
    metrics = {"num_completed": sum(t.is_ok for t in traces),
               "num_failed": sum(not t.is_ok for t in traces),
               "duration_s": duration_s}
    metrics.update(throughput_metrics(traces, duration_s))
    metrics.update(latency_metrics(traces))
    metrics["goodput_req_s"] = None if slo is None else goodput_req_s(traces, duration_s, slo)
    metrics["cached_token_fraction"] = cached_token_fraction(traces)
    if len({t.turn for t in traces}) > 1:
        metrics["ttft_ms_by_turn"] = ttft_by_turn(traces)
    return metrics


def parse_slo(text: str) -> Slo:
    """'ttft=500,tpot=50' (ms) -> Slo. Keys: ttft, tpot, e2e."""
    bounds: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in Slo._fields and f"{key}_ms" not in Slo._fields:
            raise ValueError(f"unknown SLO key {key!r} in {text!r}; use ttft=MS,tpot=MS,e2e=MS")
        bounds[key if key.endswith("_ms") else f"{key}_ms"] = float(value)
    return Slo(**bounds)
