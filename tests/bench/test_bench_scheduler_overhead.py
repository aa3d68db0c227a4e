"""bench.scheduler_overhead runs the real scheduler against the fake executor and times it."""
import json

from bench import scheduler_overhead


def test_overhead_bench_keeps_every_request_running_and_reports_each_phase(tmp_path):
    out = tmp_path / "overhead.json"
    assert scheduler_overhead.main(["--num-running", "16", "--num-steps", "20", "--prompt-len", "40",
                                    "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["num_running"], result["num_steps"], result["scenario"]) == (16, 20, "decode")
    for key in ("plan_ms", "serialize_ms", "apply_ms", "plan_plus_apply_ms"):
        assert set(result[key]) == {"mean", "p50", "p99"} and result[key]["mean"] > 0
    assert result["plan_plus_apply_ms"]["mean"] >= result["plan_ms"]["mean"]


def test_churn_scenario_replaces_finished_requests():
    args = scheduler_overhead.parser().parse_args(["--scenario", "churn", "--num-running", "8",
                                                   "--num-steps", "80", "--prompt-len", "20"])
    bench = scheduler_overhead.Bench(args)
    result = bench.run()
    # outputs are 8-63 tokens, so 80 steps finish (and replace) several requests
    assert next(bench.arrivals) > 8 + 8
    assert result["num_steps"] == 80 and bench.scheduler.pool.check_integrity()
