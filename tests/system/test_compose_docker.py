"""compose.yaml for real: build the image with `./dev image` (what the README's compose section
runs), `docker compose up` it under a Docker engine (tests/docker_engine.py), stream a greedy
Generate from the published port and check its tokens against transformers on the image's own
built-in model, stream an OpenAI chat completion from the gateway's published port (the same text
as unstreamed, 8 tokens), check that the kvstore and the executor refuse calls without the internal token
inside compose's network, that a kvstore killed by a signal comes back and the running executor
maps its new arena (they share /dev/shm through a tmpfs volume), then `down -v` and check that nothing is left: no container, volume,
network or /dev/shm arena.

Only with `./dev test --compose` (marker `compose`): the first image build takes about ten
minutes on 2 cores. Skips with the reason where no engine answers and none can be started.
"""
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from checkpoints import load_hf_model
from docker_engine import docker_engine, why_no_engine
from greedy_parity import generate_tokens, hf_greedy
from protos.v1 import generation_pb2, generation_pb2_grpc
from servers import free_port, wait_http_ready

pytestmark = [pytest.mark.system, pytest.mark.compose]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "strata:local"   # compose.yaml's image
MODEL = "/models/strata-tiny-random"
MAX_TOKENS = 8
BUILD_TIMEOUT_S = 3600
FIRST_TOKEN_TIMEOUT_S = 600
# Inside the scheduler's container: a call to the kvstore and to the executor with no token.
NO_TOKEN_PROBE = """
import grpc
from protos.v1 import executor_pb2, executor_pb2_grpc, kvstore_pb2, kvstore_pb2_grpc
calls = {"kvstore": lambda c: kvstore_pb2_grpc.KVStoreStub(c).Stats(kvstore_pb2.StatsRequest(), timeout=10),
         "executor": lambda c: executor_pb2_grpc.ExecutorStub(c).Describe(executor_pb2.DescribeRequest(), timeout=10)}
for name, port in (("kvstore", 50053), ("executor", 50052)):
    try:
        calls[name](grpc.insecure_channel(f"{name}:{port}"))
        print(name, "OK")
    except grpc.RpcError as error:
        print(name, error.code().name)
"""


def run(argv: list[str], env: dict[str, str], timeout_s: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, **kwargs)


def compose_command(env: dict[str, str]) -> list[str]:
    """Compose v2 (`docker compose`) where the engine's CLI has it, else v1 `docker-compose`."""
    if run(["docker", "compose", "version"], env).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` (v2) nor `docker-compose` (v1) is installed")


def listed(env: dict[str, str], kind: str, project: str) -> list[str]:
    """The project's containers, volumes or networks the engine still has (by compose's label)."""
    argv = ["docker", *(["ps", "-a"] if kind == "container" else [kind, "ls"]),
            "--filter", f"label=com.docker.compose.project={project}", "--format", "{{.Names}}" if
            kind == "container" else "{{.Name}}"]
    result = run(argv, env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def image_model(env: dict[str, str], into: Path) -> Path:
    """The built-in model the image serves, copied out of it (the reference's checkpoint)."""
    name = f"strata-model-{os.getpid()}"
    assert run(["docker", "create", "--name", name, IMAGE], env).returncode == 0
    try:
        copied = run(["docker", "cp", f"{name}:{MODEL}", str(into)], env)
        assert copied.returncode == 0, copied.stderr
    finally:
        run(["docker", "rm", name], env)
    return into


def first_tokens(address: str, prompt: list[int], up: subprocess.Popen,
                 started: float) -> tuple[list[int], int, float]:
    """Generate as soon as the scheduler serves: (tokens, finish reason, seconds to the first
    token since `started`). Fails at once when `compose up` fails."""
    deadline = started + FIRST_TOKEN_TIMEOUT_S
    while True:
        if up.poll():
            pytest.fail(f"compose up exited {up.returncode}:\n{up.stdout.read()}")
        try:
            with grpc.insecure_channel(address) as channel:
                stub = generation_pb2_grpc.GenerationStub(channel)
                tokens, reason = generate_tokens(stub, prompt, MAX_TOKENS)
                return tokens, reason, time.monotonic() - started
        except grpc.RpcError as error:
            if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            assert time.monotonic() < deadline, f"no token in {FIRST_TOKEN_TIMEOUT_S} s"
            time.sleep(1)


def chat_texts(base_url: str) -> tuple[str, str]:
    """The gateway's greedy chat completion of one message, streamed and not (openai client)."""
    import openai

    wait_http_ready(f"{base_url}/health", FIRST_TOKEN_TIMEOUT_S)
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    ask = dict(model="strata-tiny-random", messages=[{"role": "user", "content": "Hello there"}],
               max_tokens=MAX_TOKENS, temperature=0, extra_body={"ignore_eos": True})
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == MAX_TOKENS
    whole = client.chat.completions.create(**ask)
    assert whole.usage.completion_tokens == MAX_TOKENS
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), whole.choices[0].message.content


def kill_kvstore(project_args: list[str], env: dict[str, str]) -> None:
    """kill -9 the kvstore container's process (as a crash; `docker kill` would count as a stop
    that no restart policy undoes), then wait until compose's restart policy has it healthy."""
    container = run([*project_args, "ps", "-q", "kvstore"], env).stdout.strip()
    state = lambda: run(["docker", "inspect", "-f", "{{.State.Pid}} {{.RestartCount}} {{.State.Health.Status}}",
                         container], env).stdout.split()
    pid, restarts, _ = state()
    os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 120
    while state()[1:] != [str(int(restarts) + 1), "healthy"]:
        assert time.monotonic() < deadline, f"the kvstore is not back: {state()}"
        time.sleep(1)


def rejoins_new_arena(project_args: list[str], env: dict[str, str], address: str) -> bool:
    """Requests with new prefixes until the scheduler has re-attached the new kvstore and the
    executor has mapped its arena in the shared /dev/shm (and dropped the dead one's)."""
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(address) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        for attempt in range(1000):
            generate_tokens(stub, [7 + attempt] + list(range(100, 300)), 1)
            logs = run([*project_args, "logs", "--no-color", "executor"], env).stdout
            if logs.count("INFO mapped arena ") == 2 and "INFO unmapped arena " in logs:
                return True
            if time.monotonic() > deadline:
                print(logs[-3000:])
                return False
            time.sleep(1)
    return False


@pytest.fixture(scope="module")
def engine():
    reason = why_no_engine()
    if reason:
        pytest.skip(reason)
    with docker_engine() as env:
        yield env


@pytest.mark.timeout(BUILD_TIMEOUT_S + FIRST_TOKEN_TIMEOUT_S + 600)
def test_compose_up_streams_the_right_tokens_and_down_leaves_nothing(engine, tmp_path, capsys):
    env, compose = dict(engine), compose_command(engine)
    started = time.monotonic()
    built = run([str(ROOT / "dev"), "image", IMAGE], env, timeout_s=BUILD_TIMEOUT_S)
    build_s = time.monotonic() - started
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-5000:]

    project, port, http_port = f"stratatest{os.getpid()}", free_port(), free_port()
    # vfs copies the whole image for each new container: compose v1's 60 s per call is too short.
    env.update(STRATA_PORT=str(port), STRATA_KVSTORE_RAM="256MiB", STRATA_KVSTORE_SHM="512m",
               STRATA_DTYPE="float32", STRATA_HTTP_PORT=str(http_port), COMPOSE_HTTP_TIMEOUT="600")
    env.pop("STRATA_INTERNAL_TOKEN", None)   # the token service generates one
    project_args = [*compose, "-p", project, "-f", str(ROOT / "compose.yaml")]
    shm_before = set(os.listdir("/dev/shm"))
    prompt = list(range(5, 45))
    try:
        started = time.monotonic()
        up = subprocess.Popen([*project_args, "up", "-d", "--no-build"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tokens, reason, first_token_s = first_tokens(f"127.0.0.1:{port}", prompt, up, started)
        up_output, _ = up.communicate(timeout=120)
        assert up.returncode == 0, up_output
        expected = hf_greedy(load_hf_model(image_model(engine, tmp_path / "model")), prompt, MAX_TOKENS)
        assert (tokens, reason) == (expected, generation_pb2.FINISH_REASON_LENGTH)

        streamed, whole = chat_texts(f"http://127.0.0.1:{http_port}")
        assert streamed == whole and streamed

        probe = run([*project_args, "exec", "-T", "scheduler", "python", "-c", NO_TOKEN_PROBE], env)
        assert probe.stdout.split() == ["kvstore", "UNAUTHENTICATED", "executor", "UNAUTHENTICATED"], probe
        logs = run([*project_args, "logs", "--no-color", "executor"], env).stdout
        assert "loading the native CPU kernels" in logs and "building the native" not in logs, logs[-3000:]

        kill_kvstore(project_args, env)   # compose restarts it; the executor keeps running
        assert rejoins_new_arena(project_args, env, f"127.0.0.1:{port}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            after = generate_tokens(generation_pb2_grpc.GenerationStub(channel), prompt, MAX_TOKENS)
        assert after == (expected, generation_pb2.FINISH_REASON_LENGTH)
    finally:
        down = run([*project_args, "down", "-v", "--remove-orphans"], env)
    assert down.returncode == 0, down.stderr
    for kind in ("container", "volume", "network"):
        assert listed(engine, kind, project) == [], kind
    assert set(os.listdir("/dev/shm")) <= shm_before
    with capsys.disabled():
        print(f"\ncompose: image built in {build_s:.0f} s ({' '.join(compose)}); up -> first token "
              f"{first_token_s:.1f} s")
