"""The bench driver and CLI against a scripted in-process Generation server (a fake of the one
component the driver talks to), so the load generator is tested without a model."""
import asyncio
import json

import pytest

from bench import serve
from bench.driver import run_workload
from bench.workloads import Session, Turn
from scripted_generation import VOCAB_SIZE


def test_multiturn_prompts_carry_history_and_json_is_complete(scripted_server, tmp_path):
    servicer, target = scripted_server
    out = tmp_path / "mt.json"
    code = serve.main(["--server", target, "--workload", "multiturn", "--sessions", "3", "--turns", "3",
                       "--system-len", "20", "--user-len", "5:8", "--output-len", "4", "--seed", "1",
                       "--slo", "ttft=10000,tpot=10000", "--json", str(out), "--no-progress"])
    assert code == 0
    prompts = servicer.prompts
    assert len(prompts) == 9
    system = prompts[0][:20]
    assert all(p[:20] == system for p in prompts)
    # each turn's prompt = previous turn's prompt + the 4 ids the server returned + a new user chunk
    by_length = sorted(prompts, key=len)
    for prompt in by_length:
        parents = [p for p in prompts if len(p) < len(prompt) and prompt[:len(p)] == p]
        if len(prompt) > 20 + 8:
            parent = max(parents, key=len)
            assert prompt[len(parent):len(parent) + 4] == [(len(parent) + i) % VOCAB_SIZE for i in range(4)]
    result = json.loads(out.read_text())
    config = result["configurations"]["server"]
    assert (config["num_completed"], config["num_failed"]) == (9, 0)
    assert config["num_output_tokens"] == 36
    assert config["num_input_tokens"] == sum(map(len, prompts))
    assert config["goodput_req_s"] == pytest.approx(config["request_throughput_req_s"])
    assert config["num_preemptions"] == 9
    assert config["tiers"][0]["tier"] == "ram" and config["tiers"][0]["hit_rate"] == 0.5
    assert set(config["ttft_ms_by_turn"]) == {"0", "1", "2"}
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_latency_ms"):
        assert set(config[key]) == {"mean", "p50", "p90", "p99"}
    # 3 ITL values per request: 1 ms-ish gaps between 2-token responses, each split in two
    assert config["itl_ms"]["p50"] < config["tpot_ms"]["p99"] * 2
    assert 0 < config["cached_token_fraction"] < 1
    assert result["workload"]["num_requests"] == 9 and result["machine"]["num_cpus"] >= 1
    assert set(result["versions"]) >= {"strata", "torch", "grpcio", "transformers"}


def test_same_seed_sends_same_prompts_and_concurrency_limit(scripted_server, tmp_path):
    servicer, target = scripted_server
    args = ["--server", target, "--workload", "random", "--num-prompts", "6", "--input-len", "3:9",
            "--output-len", "2:5", "--max-concurrency", "2", "--no-progress"]
    assert serve.main(args) == 0
    first = sorted(servicer.prompts)
    servicer.prompts.clear()
    assert serve.main(args + ["--plot", str(tmp_path / "cdf.png")]) == 0
    assert sorted(servicer.prompts) == first
    assert all(3 <= len(p) <= 9 and min(p) >= 1 and max(p) < VOCAB_SIZE for p in first)
    assert (tmp_path / "cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prefix_and_longdoc_share_their_prefixes(scripted_server):
    servicer, target = scripted_server
    assert serve.main(["--server", target, "--workload", "prefix", "--num-prompts", "4", "--prefix-len", "24",
                       "--suffix-len", "2:3", "--output-len", "1", "--no-progress"]) == 0
    assert len({tuple(p[:24]) for p in servicer.prompts}) == 1 and len(servicer.prompts) == 4
    servicer.prompts.clear()
    assert serve.main(["--server", target, "--workload", "longdoc", "--docs", "2", "--doc-len", "30",
                       "--questions", "3", "--question-len", "4", "--output-len", "2", "--no-progress"]) == 0
    docs = [tuple(p[:30]) for p in servicer.prompts]
    assert len(docs) == 6 and len(set(docs)) == 2


def test_bad_options_are_usage_errors(capsys):
    with pytest.raises(SystemExit):
        serve.main(["--compare", "a=--x"])
    assert "--compare needs --launch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve.main(["--launch", "--baseline", "hf"])
    assert "--baseline hf needs --model" in capsys.readouterr().err


def test_workload_longer_than_the_model_is_refused_before_sending(scripted_server, capsys):
    servicer, target = scripted_server
    code = serve.main(["--server", target, "--workload", "random", "--num-prompts", "2",
                       "--input-len", "5000", "--output-len", "4", "--no-progress"])
    assert code == 2 and servicer.prompts == []
    assert "workload needs 5004 tokens of context but the model serves 4096" in capsys.readouterr().err


def test_turn_barrier_starts_each_turn_after_every_session_ended_the_last(scripted_server):
    servicer, target = scripted_server
    # 1, 9 and 21 output tokens a turn: without the barrier the short session would run ahead
    sessions = [Session([3] * 10, [Turn([4 + s] * 5, num_tokens) for _ in range(3)])
                for s, num_tokens in enumerate((1, 9, 21))]
    run = asyncio.run(run_workload(target, lambda generator: generator.run_turn_by_turn(sessions),
                                   None, lambda: None, tag="barrier"))
    assert len(run.sent) == 9 and all(request.trace.is_ok for request in run.sent)
    by_turn = {turn: [r.trace for r in run.sent if r.trace.turn == turn] for turn in range(3)}
    for turn in (1, 2):
        last_end = max(trace.response_times[-1] for trace in by_turn[turn - 1])
        assert min(trace.send_time for trace in by_turn[turn]) >= last_end
    # each turn's wall is its first send to its last response, waiting on the 21-token session
    assert len(run.turn_wall_s) == 3 and sum(run.turn_wall_s) <= run.duration_s
    for turn, wall in enumerate(run.turn_wall_s):
        span = (max(t.response_times[-1] for t in by_turn[turn]) - min(t.send_time for t in by_turn[turn]))
        assert span <= wall < span + 0.25   # the gather returns right after the last stream ends
    assert len(servicer.prompts) == 9


def test_turn_barrier_reports_per_turn_walls_in_the_json(scripted_server, tmp_path):
    servicer, target = scripted_server
    out = tmp_path / "mt.json"
    assert serve.main(["--server", target, "--workload", "multiturn", "--sessions", "3", "--turns", "3",
                       "--system-len", "20", "--user-len", "5:8", "--output-len", "4", "--turn-barrier",
                       "--json", str(out), "--no-progress"]) == 0
    config = json.loads(out.read_text())["configurations"]["server"]
    assert len(config["turn_wall_s"]) == 3 and config["num_completed"] == 9
    assert config["later_turns_wall_s"] == pytest.approx(sum(config["turn_wall_s"][1:]))
    assert config["ratios"]["vs_server"]["later_turns_wall"] == 1.0
    assert json.loads(out.read_text())["workload"]["turn_barrier"] is True
