"""`strata bench --launch` end to end: real `strata up` on a tiny checkpoint, real gRPC, the
transformers baseline on the same prompts, the JSON document and the PNG."""
import json

import pytest

from bench import serve

pytestmark = pytest.mark.system

LATENCIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_latency_ms")
THROUGHPUTS = ("output_throughput_tok_s", "total_throughput_tok_s", "input_throughput_tok_s",
               "request_throughput_req_s")


def assert_complete(config, num_requests):
    assert (config["num_completed"], config["num_failed"]) == (num_requests, 0), config.get("errors")
    for key in THROUGHPUTS:
        assert config[key] > 0, key
    for key in LATENCIES:
        summary = config[key]
        assert set(summary) == {"mean", "p50", "p90", "p99"}, key
        assert 0 < summary["p50"] <= summary["p90"] <= summary["p99"], key
    assert config["e2e_latency_ms"]["mean"] >= config["ttft_ms"]["mean"]
    assert 0.0 <= config["cached_token_fraction"] <= 1.0
    for key in ("goodput_req_s", "num_preemptions", "tiers", "duration_s", "ratios"):
        assert key in config, key


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_random_workload_with_hf_baseline_writes_complete_json(llama_dir, tmp_path):
    out = tmp_path / "r.json"
    code = serve.main(["--workload", "random", "--num-prompts", "8", "--input-len", "8:40",
                       "--output-len", "4:8", "--launch", "--model", str(llama_dir),
                       "--baseline", "hf", "--hf-batch-size", "4", "--hf-threads", "1",
                       "--slo", "ttft=60000,tpot=60000", "--json", str(out), "--no-progress"])
    assert code == 0
    result = json.loads(out.read_text())
    config = result["configurations"]["strata"]
    assert_complete(config, 8)
    # Every request ran to exactly its max_tokens (ignore_eos), like the baseline's accounting.
    hf = result["baselines"]["hf"]
    assert config["num_output_tokens"] == hf["num_output_tokens"]
    assert config["num_input_tokens"] == hf["num_input_tokens"]
    assert hf["output_throughput_tok_s"] > 0 and hf["ttft_ms"] is None and hf["torch_num_threads"] == 1
    assert config["ratios"]["vs_hf"]["output_throughput"] == pytest.approx(
        config["output_throughput_tok_s"] / hf["output_throughput_tok_s"])
    assert config["goodput_req_s"] == pytest.approx(config["request_throughput_req_s"])
    assert result["model"]["vocab_size"] > 0 and result["versions"]["strata"]
    assert result["threads"]["OMP_NUM_THREADS"] == "1"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compare_runs_each_configuration_on_the_same_multiturn_prompts(llama_dir, tmp_path):
    out, png = tmp_path / "mt.json", tmp_path / "mt.png"
    code = serve.main(["--workload", "multiturn", "--sessions", "3", "--turns", "3", "--system-len", "48",
                       "--user-len", "8:16", "--output-len", "4", "--launch", "--model", str(llama_dir),
                       "--compare", "first=--num-device-blocks 256", "second=--num-device-blocks 64", "--json", str(out), "--plot", str(png),
                       "--no-progress"])
    assert code == 0
    configurations = json.loads(out.read_text())["configurations"]
    assert list(configurations) == ["first", "second"]
    assert configurations["second"]["server_args"][-2:] == ["--num-device-blocks", "64"]
    for config in configurations.values():
        assert_complete(config, 9)
        assert set(config["ttft_ms_by_turn"]) == {"0", "1", "2"}
        # turns after the first re-send the shared system prompt and the history: cache hits
        assert config["cached_token_fraction"] > 0
    # greedy + same seed: both servers saw the same prompts and returned the same tokens
    assert configurations["first"]["num_input_tokens"] == configurations["second"]["num_input_tokens"]
    assert configurations["second"]["ratios"]["vs_first"]["output_throughput"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(120)
def test_server_that_cannot_start_is_a_clear_error(llama_dir, capsys):
    code = serve.main(["--launch", "--model", str(llama_dir), "--no-such-up-flag", "3", "--no-progress"])
    assert code == 2
    error = capsys.readouterr().err
    assert "`strata up` exited with" in error and "--no-such-up-flag" in error
