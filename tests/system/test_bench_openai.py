"""`strata bench --backend openai` against `strata up --http-port` on the tiny Llama: every
request succeeds with exactly its max_tokens (ignore_eos), multi-turn histories go through
/tokenize, and a refused request is a failure carrying the server's message."""
import json

import pytest

from bench import serve
from servers import free_port, start_up, wait_http_ready

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def gateway(llama_dir):
    http_port = free_port()
    with start_up(["--model", str(llama_dir), "--http-port", str(http_port), "--no-kvstore",
                   "--num-device-blocks", "256"]):
        base_url = f"http://127.0.0.1:{http_port}"
        wait_http_ready(base_url + "/health")
        yield base_url



def bench(gateway, llama_dir, tmp_path, *workload):
    out = tmp_path / "openai.json"
    code = serve.main(["--backend", "openai", "--base-url", gateway + "/v1", "--model-dir", str(llama_dir),
                       *workload, "--json", str(out), "--no-progress"])
    return code, json.loads(out.read_text())


@pytest.mark.timeout(120)
def test_random_workload_every_request_gets_its_max_tokens(gateway, llama_dir, tmp_path):
    code, result = bench(gateway, llama_dir, tmp_path, "--workload", "random", "--num-prompts", "6",
                         "--input-len", "8:24", "--output-len", "5", "--max-concurrency", "4")
    config = result["configurations"]["openai"]
    assert code == 0, config.get("errors")
    assert (config["num_completed"], config["num_failed"]) == (6, 0)
    assert config["num_output_tokens"] == 6 * 5
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_latency_ms"):
        assert 0 < config[key]["p50"] <= config[key]["p99"], key
    assert config["e2e_latency_ms"]["mean"] >= config["ttft_ms"]["mean"]
    assert result["workload"]["backend"] == "openai" and config["server_target"] == gateway + "/v1"
    assert result["model"]["vocab_size"] == json.loads((llama_dir / "config.json").read_text())["vocab_size"]


@pytest.mark.timeout(120)
def test_multiturn_histories_grow_by_each_turn(gateway, llama_dir, tmp_path):
    code, result = bench(gateway, llama_dir, tmp_path, "--workload", "multiturn", "--sessions", "2",
                         "--turns", "2", "--system-len", "16", "--user-len", "4", "--output-len", "3")
    config = result["configurations"]["openai"]
    assert code == 0, config.get("errors")
    assert (config["num_completed"], config["num_output_tokens"]) == (4, 4 * 3)
    # turn 1's prompt: system 16 + user 4 + turn 0's output (re-tokenized text) + user 4
    assert config["num_input_tokens"] > 2 * (16 + 4) + 2 * (16 + 4 + 4)


@pytest.mark.timeout(60)
def test_refused_requests_are_failures_with_the_message(gateway, llama_dir, tmp_path):
    code, result = bench(gateway, llama_dir, tmp_path, "--model", "no-such-model", "--workload", "random",
                         "--num-prompts", "2", "--input-len", "4", "--output-len", "2")
    config = result["configurations"]["openai"]
    assert code == 1
    assert (config["num_completed"], config["num_failed"]) == (0, 2)
    assert "HTTP 400" in config["errors"][0] and "no-such-model" in config["errors"][0]


@pytest.mark.timeout(120)
def test_gateway_overhead_alternates_both_sides_on_one_server(llama_dir, tmp_path):
    from bench import gateway_overhead

    out = tmp_path / "overhead.json"
    code = gateway_overhead.main(["--model", str(llama_dir), "--num-prompts", "4", "--input-len", "8:16",
                                  "--output-len", "4", "--alternations", "2", "--server-args",
                                  "--dtype float32 --num-device-blocks 128", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    for side in ("grpc", "gateway"):
        runs = result["sides"][side]["runs"]
        assert [(r["num_completed"], r["num_output_tokens"]) for r in runs] == [(4, 16), (4, 16)]
    assert result["throughput_ratio"] > 0 and "ttft_p50_difference_ms" in result
