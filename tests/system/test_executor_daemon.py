"""The real daemon as a subprocess over a unix socket: parity, bad plans, health, shutdown."""
import math
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
import torch
from checkpoints import load_hf_model
from servers import EXACT_DTYPE
from internal_token import TOKEN, TOKEN_FILE
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.step_plans import SimpleDriver, make_plan, new_request, running
from protos.v1 import executor_pb2, executor_pb2_grpc
from runtime.token import with_token

pytestmark = pytest.mark.system

BLOCK_SIZE = 4
NUM_BLOCKS = 64


def wait_ready(channel, process, timeout=60.0):
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"executor exited with {process.returncode}"
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service="strata.v1.Executor"), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise TimeoutError("executor did not become ready")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, llama_dir):
    run_dir = tmp_path_factory.mktemp("executor")
    listen = f"unix:{run_dir / 'executor.sock'}"
    command = [sys.executable, "-m", "strata.cli", "executor", "--model", str(llama_dir),
               "--listen", listen, "--block-size", str(BLOCK_SIZE), "--num-device-blocks", str(NUM_BLOCKS),
               "--max-num-batched-tokens", "64", "--data-dir", str(run_dir), *EXACT_DTYPE,
               "--token-file", TOKEN_FILE]
    log = open(run_dir / "executor.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    channel = grpc.insecure_channel(listen)
    try:
        wait_ready(channel, process)
        yield executor_pb2_grpc.ExecutorStub(with_token(channel, TOKEN)), process, run_dir
    finally:
        channel.close()
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        log.close()


def test_describe_reports_geometry(daemon, llama_dir):
    stub, _, _ = daemon
    info = stub.Describe(executor_pb2.DescribeRequest())
    assert (info.architecture, info.block_size, info.num_blocks) == ("LlamaForCausalLM", BLOCK_SIZE, NUM_BLOCKS)
    assert (info.num_layers, info.num_kv_heads, info.head_dim, info.vocab_size) == (2, 2, 16, 512)
    assert info.page_bytes == 2 * 2 * BLOCK_SIZE * 2 * 16 * 4
    assert info.model_path == str(llama_dir.resolve()) and info.dtype == "float32" and info.device == "cpu"
    assert info.eos_token_ids == [0] and len(info.model_id) == 32 and info.max_num_batched_tokens == 64


def test_greedy_over_grpc_matches_generate(daemon, llama_dir):
    stub, _, _ = daemon
    stub.Reset(executor_pb2.ResetRequest())
    prompt = [5, 17, 99, 300, 2, 45, 7]
    driver = SimpleDriver(BLOCK_SIZE)
    driver.add("g", prompt)
    for _ in range(24):
        driver.apply(stub.Step(driver.plan()))
    expected = load_hf_model(llama_dir).generate(
        torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24, do_sample=False,
        eos_token_id=None, pad_token_id=0)[0, len(prompt):]
    assert driver.outputs["g"] == expected.tolist()


BAD_PLANS = {
    "unknown request": (make_plan(2, run=[running("ghost", 0, 1)]), "unknown"),
    "block out of range": (make_plan(2, [new_request("b", [1, 2, 3], [NUM_BLOCKS])]), "block id 64 out of range"),
    "token >= vocab": (make_plan(2, [new_request("b", [1, 512, 3], [1])]), "token id 512 >= vocab size 512"),
    "over token budget": (make_plan(2, [new_request("b", list(range(1, 66)), list(range(17)))]),
                          "more than max_num_batched_tokens 64"),
    "wrong total": (executor_pb2.StepPlan(step_id=2, num_scheduled_tokens=9,
                                          new_requests=[new_request("b", [1, 2, 3], [1])]), "schedule 3"),
    "unmapped arena": (executor_pb2.StepPlan(step_id=2, loads=[executor_pb2.PageMove(block_id=1, slot=0, arena_id="x")]),
                       "no host arena mapped"),
    "endless wait": (executor_pb2.StepPlan(step_id=2, wait_for_moves_s=math.inf), "wait_for_moves_s is inf"),
}


@pytest.mark.parametrize("name", BAD_PLANS)
def test_bad_plan_is_invalid_argument_and_next_plan_works(daemon, name):
    stub, process, _ = daemon
    stub.Reset(executor_pb2.ResetRequest())
    first = stub.Step(make_plan(1, [new_request("keep", [3, 4, 5], [10])]))
    plan, message = BAD_PLANS[name]
    with pytest.raises(grpc.RpcError) as error:
        stub.Step(plan)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()
    # Nothing changed: the held request continues exactly where it was.
    good = stub.Step(make_plan(3, run=[running("keep", 3, 1)]))
    assert [s.request_id for s in good.sampled] == ["keep"] and first.sampled[0].request_id == "keep"
    assert process.poll() is None


def test_sigterm_stops_cleanly(tmp_path, llama_dir):
    listen = f"unix:{tmp_path / 'e.sock'}"
    process = subprocess.Popen([sys.executable, "-m", "strata.cli", "executor", "--model", str(llama_dir),
                                "--listen", listen, "--num-device-blocks", "8", "--token-file", TOKEN_FILE])
    with grpc.insecure_channel(listen) as channel:
        wait_ready(channel, process)
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=30) == 0
