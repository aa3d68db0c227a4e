"""Daemon-to-daemon channels are authenticated by default.

Under `strata up` the executor's and the kvstore's sockets refuse every call without the run's
internal token (UNAUTHENTICATED): the page-planting attack of the robustness review (pages under
keys derived from GetModelInfo.model_id and a prompt, pushed into the kvstore) is refused, and the
server keeps serving transformers' greedy tokens. Health stays open; with the token every call
works, and MapArena still refuses a file that is not one of the kvstore's arenas. Started alone,
`strata executor` and `strata kvstore` refuse to serve without a token unless given --insecure.
"""
import json
import math
import re
import stat
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from checkpoints import load_hf_model
from greedy_parity import greedy_request, hf_greedy
from protos.v1 import executor_pb2, executor_pb2_grpc, generation_pb2
from protos.v1 import kvstore_pb2 as kv_pb
from protos.v1 import kvstore_pb2_grpc
from scheduler.block_hash import extend_keys, make_namespace
from servers import STRATA, child_env, start_up

pytestmark = pytest.mark.system

Code = grpc.StatusCode
PROMPT = list(range(3, 68))   # four full blocks of 16 and one more token
MAX_TOKENS = 8


def page_shape(model_dir: Path, block_size: int) -> tuple[int, ...]:
    config = json.loads((model_dir / "config.json").read_text())
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    return (config["num_hidden_layers"], 2, block_size, config["num_key_value_heads"], head_dim)


def planted_pages(info: generation_pb2.ModelInfo, shape: tuple[int, ...]) -> list[tuple[bytes, bytes]]:
    """What any client can derive from public data: the keys of PROMPT's full blocks, each with
    a page of garbage of the right size (fp32 K/V)."""
    namespace = make_namespace(info.model_id, "float32", shape, "")
    keys: list[bytes] = []
    extend_keys(keys, namespace, PROMPT, info.block_size, len(PROMPT) // info.block_size)
    return [(key, b"\x7f" * (math.prod(shape) * 4)) for key in keys]


def status_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code()


def is_serving(channel: grpc.Channel, service: str) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=10)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def generate(stub) -> tuple[list[int], int]:
    tokens, usage = [], None
    for response in stub.Generate(greedy_request(PROMPT, MAX_TOKENS), timeout=300):
        tokens += response.token_ids
        usage = response.usage if response.HasField("usage") else usage
    return tokens, usage.cached_tokens


def run_dir_of(data_dir: Path) -> Path:
    log = (data_dir / "logs" / "scheduler.log").read_text()
    return Path(re.search(r"unix:(\S+)/executor\.sock", log).group(1))


def test_up_daemon_sockets_refuse_calls_without_the_run_token(llama_dir, tmp_path):
    data_dir = tmp_path / "data"
    with start_up(["--model", str(llama_dir), "--num-device-blocks", "64",
                   "--data-dir", str(data_dir), "--kvstore-ram", "64MiB"]) as server:
        run_dir = run_dir_of(data_dir)
        info = server.stub.GetModelInfo(generation_pb2.GetModelInfoRequest())
        pages = planted_pages(info, page_shape(llama_dir, info.block_size))
        with grpc.insecure_channel(f"unix:{run_dir / 'kvstore.sock'}") as kv_channel, \
                grpc.insecure_channel(f"unix:{run_dir / 'executor.sock'}") as ex_channel:
            kvstore = kvstore_pb2_grpc.KVStoreStub(kv_channel)
            planting = (kv_pb.Page(key=key, data=data) for key, data in pages)
            assert status_of(lambda: kvstore.PutPages(planting, timeout=10)) == Code.UNAUTHENTICATED
            assert status_of(lambda: kvstore.PrepareStore(kv_pb.PrepareStoreRequest(
                namespace="x", keys=[key for key, _ in pages]), timeout=10)) == Code.UNAUTHENTICATED
            assert status_of(lambda: kvstore.Stats(kv_pb.StatsRequest(), timeout=10)) == Code.UNAUTHENTICATED
            executor = executor_pb2_grpc.ExecutorStub(ex_channel)
            assert status_of(lambda: executor.Describe(executor_pb2.DescribeRequest(), timeout=10)) \
                == Code.UNAUTHENTICATED
            assert status_of(lambda: executor.Reset(executor_pb2.ResetRequest(), timeout=10)) \
                == Code.UNAUTHENTICATED
            assert is_serving(kv_channel, "strata.v1.KVStore") and is_serving(ex_channel, "strata.v1.Executor")

            tokens, cached_tokens = generate(server.stub)
            model = load_hf_model(llama_dir)
            model.generation_config.eos_token_id = None
            assert tokens == hf_greedy(model, PROMPT, MAX_TOKENS) and cached_tokens == 0

            token_path = run_dir / "internal.token"
            assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
            assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
            metadata = (("authorization", f"Bearer {token_path.read_text().strip()}"),)
            assert executor.Describe(executor_pb2.DescribeRequest(), metadata=metadata,
                                     timeout=10).model_id == info.model_id
            assert kvstore.Stats(kv_pb.StatsRequest(), metadata=metadata, timeout=10).tiers
            not_an_arena = executor_pb2.MapArenaRequest(arena_id="x", arena_path="/etc/passwd",
                                                        slot_bytes=1 << 20, num_slots=1)
            assert status_of(lambda: executor.MapArena(not_an_arena, metadata=metadata, timeout=10)) \
                == Code.FAILED_PRECONDITION


@pytest.mark.parametrize("argv", [
    ["kvstore", "--ram", "16MiB"],
    ["executor", "--num-device-blocks", "8"],
])
def test_a_daemon_alone_refuses_to_serve_without_a_token(argv, tmp_path, llama_dir):
    extra = ["--shm-dir", str(tmp_path)] if argv[0] == "kvstore" else ["--model", str(llama_dir)]
    listen = ["--listen", f"unix:{tmp_path / 'd.sock'}"]
    result = subprocess.run([*STRATA, *argv, *listen, *extra], capture_output=True, text=True,
                            timeout=60, env=child_env())
    assert result.returncode != 0
    assert "--token-file" in result.stderr and "--insecure" in result.stderr
