"""bench.metrics on synthetic traces whose answers are worked out by hand."""
import numpy as np
import pytest

from bench import metrics, report, server_stats
from bench.metrics import RequestTrace, Slo
from bench.workloads import Session, TokenSource, Turn, arrival_offsets, parse_range
from protos.v1 import generation_pb2

# send at 10.0; responses at +0.25 (1 token), +0.5 (1), +1.0 (2), +1.25 (0: final, usage only)
TRACE = RequestTrace(10.0, [10.25, 10.5, 11.0, 11.25], [1, 1, 2, 0], num_prompt_tokens=100,
                     num_cached_tokens=32)


def test_ttft_is_first_token_carrying_response():
    assert metrics.ttft_s(TRACE) == 0.25
    leading_empty = RequestTrace(0.0, [0.125, 0.5], [0, 3])
    assert metrics.ttft_s(leading_empty) == 0.5


def test_e2e_is_end_of_stream():
    assert metrics.e2e_s(TRACE) == 1.25


def test_tpot_spreads_after_first_token_over_remaining_tokens():
    assert metrics.tpot_s(TRACE) == pytest.approx((1.25 - 0.25) / 3, rel=1e-12)
    assert metrics.tpot_s(RequestTrace(0.0, [0.5], [1])) is None


def test_itl_divides_a_multi_token_gap_across_its_tokens():
    assert metrics.itls_s(TRACE) == [0.25, 0.25, 0.25]
    assert metrics.itls_s(RequestTrace(0.0, [1.0, 2.0, 6.0], [3, 1, 4])) == [1.0, 1.0, 1.0, 1.0, 1.0]


def test_percentiles_interpolate_linearly():
    summary = metrics.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert summary == pytest.approx((3.0, 3.0, 4.6, 4.96), abs=1e-12)
    assert summary.p90 == np.percentile([1, 2, 3, 4, 5], 90)
    assert metrics.summarize([]) is None
    assert metrics.summarize([7.0]) == (7.0, 7.0, 7.0, 7.0)


def _traces():
    fast = RequestTrace(0.0, [0.25, 0.5, 0.75], [1, 1, 1], num_prompt_tokens=10, num_cached_tokens=0)
    slow_first = RequestTrace(0.0, [1.0, 1.25], [1, 1], num_prompt_tokens=20, num_cached_tokens=16)
    slow_decode = RequestTrace(1.0, [1.125, 2.125], [1, 1], num_prompt_tokens=30, num_cached_tokens=8)
    failed = RequestTrace(0.0, error="UNAVAILABLE: gone", num_prompt_tokens=40)
    return [fast, slow_first, slow_decode, failed]


def test_run_metrics_on_known_trace():
    result = metrics.run_metrics(_traces(), duration_s=2.0, slo=Slo(ttft_ms=500, tpot_ms=500))
    assert (result["num_completed"], result["num_failed"]) == (3, 1)
    assert result["request_throughput_req_s"] == 1.5
    assert result["input_throughput_tok_s"] == 30.0        # (10 + 20 + 30) / 2
    assert result["output_throughput_tok_s"] == 3.5        # (3 + 2 + 2) / 2
    assert result["total_throughput_tok_s"] == 33.5
    assert result["ttft_ms"] == pytest.approx({"mean": 1375 / 3, "p50": 250.0, "p90": 850.0,
                                               "p99": 985.0})  # TTFTs 250, 1000, 125 ms
    assert result["tpot_ms"] == pytest.approx({"mean": 500.0, "p50": 250.0, "p90": 850.0, "p99": 985.0})
    assert result["itl_ms"]["mean"] == 437.5  # 250, 250, 250, 1000
    assert result["e2e_latency_ms"]["p50"] == 1125.0              # 750, 1250, 1125
    # only `fast` meets ttft <= 500 and tpot <= 500 (slow_decode's tpot is 1000 ms)
    assert result["goodput_req_s"] == 0.5
    assert result["cached_token_fraction"] == 24 / 60
    assert "ttft_ms_by_turn" not in result


def test_goodput_without_slo_is_none_and_one_token_request_passes_tpot():
    assert metrics.run_metrics(_traces(), 2.0, None)["goodput_req_s"] is None
    one_token = RequestTrace(0.0, [0.1], [1])
    assert metrics.meets_slo(one_token, Slo(ttft_ms=200, tpot_ms=1))


def test_ttft_by_turn():
    traces = [RequestTrace(0.0, [0.5], [1], turn=0), RequestTrace(0.0, [0.25], [1], turn=1),
              RequestTrace(0.0, [0.75], [1], turn=1)]
    by_turn = metrics.run_metrics(traces, 1.0, None)["ttft_ms_by_turn"]
    assert by_turn["0"]["mean"] == 500.0 and by_turn["1"]["mean"] == 500.0
    assert by_turn["1"]["p50"] == 500.0 and by_turn["1"]["p99"] == pytest.approx(745.0)


def test_parse_slo():
    assert metrics.parse_slo("ttft=500,tpot=50") == Slo(ttft_ms=500.0, tpot_ms=50.0)
    with pytest.raises(ValueError, match="unknown SLO key 'latency'"):
        metrics.parse_slo("latency=3")


def test_server_metrics_are_deltas_per_tier():
    before = generation_pb2.Stats(num_preemptions=3, prefix_cache_query_tokens=100, prefix_cache_hit_tokens=10,
                                  tiers=[generation_pb2.TierStats(tier="ram", num_hits=5, num_misses=5)])
    after = generation_pb2.Stats(num_preemptions=7, prefix_cache_query_tokens=300, prefix_cache_hit_tokens=60,
                                 tiers=[generation_pb2.TierStats(tier="ram", num_hits=8, num_misses=6),
                                        generation_pb2.TierStats(tier="disk", num_hits=1, num_misses=3)])
    result = server_stats.server_metrics(before, after)
    assert result["num_preemptions"] == 4
    assert result["prefix_cache_hit_rate"] == 0.25
    assert [(t["tier"], t["num_hits"], t["num_misses"], t["hit_rate"]) for t in result["tiers"]] == [
        ("ram", 3, 1, 0.75), ("disk", 1, 3, 0.25)]
    assert server_stats.server_metrics(None, after)["num_preemptions"] is None


def test_ratios_vs_first_and_baseline():
    first = report.ConfigResult("a", {"output_throughput_tok_s": 10.0, "ttft_ms": {"mean": 100.0, "p50": 80.0}})
    second = report.ConfigResult("b", {"output_throughput_tok_s": 30.0, "ttft_ms": {"mean": 50.0, "p50": 40.0}})
    hf = report.ConfigResult("hf", {"output_throughput_tok_s": 5.0, "ttft_ms": None})
    report.attach_ratios([first, second], [hf])
    assert second.metrics["ratios"]["vs_a"]["output_throughput"] == 3.0
    assert second.metrics["ratios"]["vs_a"]["ttft_mean"] == 0.5
    assert second.metrics["ratios"]["vs_hf"]["output_throughput"] == 6.0
    assert second.metrics["ratios"]["vs_hf"]["ttft_mean"] is None
    assert hf.metrics["ratios"]["vs_a"]["output_throughput"] == 0.5


def offline(output_tok_s, turn_wall_s):
    return {**metrics.offline_metrics(4, 100, 40, 40 / output_tok_s), **metrics.turn_wall_metrics(turn_wall_s)}


def test_ratios_against_each_baseline_in_order_with_the_later_turns_wall():
    strata = report.ConfigResult("strata", {**offline(100.0, [1.0, 1.0, 2.0]), "num_preemptions": 0})
    vllm_bf16 = report.ConfigResult("vllm-bf16", offline(200.0, [1.0, 3.0, 3.0]))
    vllm_fp32 = report.ConfigResult("vllm-fp32", offline(50.0, [2.0, 6.0, 6.0]))
    hf = report.ConfigResult("hf", {**metrics.offline_metrics(4, 100, 40, 4.0)})
    report.attach_ratios([strata], [vllm_bf16, vllm_fp32, hf])
    assert list(strata.metrics["ratios"]) == ["vs_strata", "vs_vllm-bf16", "vs_vllm-fp32", "vs_hf"]
    assert strata.metrics["ratios"]["vs_vllm-bf16"]["output_throughput"] == 0.5
    assert strata.metrics["ratios"]["vs_vllm-bf16"]["later_turns_wall"] == 0.5   # 3 s vs 6 s
    assert strata.metrics["ratios"]["vs_vllm-fp32"]["later_turns_wall"] == 0.25
    assert strata.metrics["ratios"]["vs_hf"]["later_turns_wall"] is None
    lines = report.format_table([strata, vllm_bf16, vllm_fp32, hf]).splitlines()
    assert lines[0].split() == ["metric", "strata", "vllm-bf16", "vllm-fp32", "hf"]
    row = {line.split("  ")[0].strip(): line.split("  ")[-1].strip() for line in lines}
    ratio_rows = [label for label in row if label.startswith(("output tok/s vs", "turns 2..T wall vs"))]
    assert ratio_rows == ["output tok/s vs strata", "turns 2..T wall vs strata",
                          "output tok/s vs vllm-bf16", "turns 2..T wall vs vllm-bf16",
                          "output tok/s vs vllm-fp32", "turns 2..T wall vs vllm-fp32", "output tok/s vs hf"]
    assert row["turns 2..T wall (s)"] == "-"   # hf's column: it has no turns
    assert " 1.00 1.00 2.00 " in next(line for line in lines if line.startswith("wall time per turn"))
    table = {line.split("  ")[0].strip(): line.split()[-4:] for line in lines}
    assert table["turns 2..T wall vs vllm-bf16"] == ["0.500", "1.000", "2.000", "-"]
    document = report.document([strata], [vllm_bf16, hf], {"command": ["strata", "bench"]})
    assert list(document["baselines"]) == ["vllm-bf16", "hf"]
    assert document["configurations"]["strata"]["later_turns_wall_s"] == 3.0


def test_workloads_are_reproducible_and_in_range():
    first, second = TokenSource(50, [0, 1], seed=7), TokenSource(50, [0, 1], seed=7)
    assert first.ids(200) == second.ids(200)
    ids = TokenSource(50, [0, 1], seed=3).ids(5000)
    assert min(ids) == 2 and max(ids) == 49
    assert parse_range("64:512") == (64, 512) and parse_range("32") == (32, 32)
    with pytest.raises(ValueError):
        parse_range("9:3")
    assert Session([1] * 10, [Turn([2] * 5, 4), Turn([3] * 6, 7)]).max_context_len == 32


def test_arrival_offsets():
    assert arrival_offsets(3, float("inf"), 0) == [0.0, 0.0, 0.0]
    offsets = arrival_offsets(2000, 4.0, 0)
    assert offsets[0] == 0.0 and offsets == sorted(offsets) and offsets == arrival_offsets(2000, 4.0, 0)
    assert np.mean(np.diff(offsets)) == pytest.approx(0.25, rel=0.1)
