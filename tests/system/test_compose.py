"""compose.yaml without a Docker engine: parse it, check the wiring between its services, run
every `command` through its daemon's real argument parser, then run the token service's command
and start the three daemons' as local processes (in compose's dependency order, gated by the
services' own healthchecks), check that the kvstore and the executor refuse calls without the
token, and generate through them.

Only what a container provides is rewritten for the local run: service hostnames and 0.0.0.0
listeners -> 127.0.0.1 with free ports, /data and /secrets -> tmp dirs, the model -> the tiny
test checkpoint, and sizes that fit this machine.
"""
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml

from executor import daemon as executor_daemon
from executor.default_model import NAME as DEFAULT_MODEL_NAME
from kvstore import daemon as kvstore_daemon
from kvstore.service import SERVICE_NAME as KVSTORE_SERVICE
from protos.v1 import common_pb2, executor_pb2, executor_pb2_grpc, generation_pb2, generation_pb2_grpc
from protos.v1 import kvstore_pb2, kvstore_pb2_grpc
from scheduler import daemon as scheduler_daemon
from servers import EXACT_DTYPE, STRATA, child_env, free_port, logs, spawn, stop_processes

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("kvstore", "executor", "scheduler")   # compose's start order (depends_on)
PARSERS = {"kvstore": kvstore_daemon.build_parser().parse_args,
           "executor": executor_daemon.build_parser().parse_args,
           "scheduler": scheduler_daemon.parse_args}
READY_SERVICES = {"kvstore": KVSTORE_SERVICE, "executor": executor_daemon.SERVICE_NAME,
                  "scheduler": scheduler_daemon.SERVICE_NAME}
MAX_TOKENS = 8
TOKEN_PATH = "/secrets/internal-token"   # on the `secrets` volume the token service writes


def interpolate(value: str) -> str:
    """Compose's `${NAME:-default}`, taking the default: the test must not depend on the
    caller's environment."""
    assert "$" not in re.sub(r"\$\{\w+:-[^}]*\}", "", value), f"unsupported interpolation: {value}"
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]


def docker_bytes(text: str) -> int:
    """Docker's sizes ('3gb', '512m'): binary units."""
    number, unit = re.fullmatch(r"(\d+)([kmg]?)b?", text.lower()).groups()
    return int(number) << (10 * " kmg".index(unit or " "))


def command(services: dict, name: str) -> list[str]:
    return [interpolate(arg) for arg in services[name]["command"]]


def parsed(services: dict, name: str):
    argv = command(services, name)
    assert argv[0] == name, "the image's entrypoint is `strata`: command starts with the daemon"
    return PARSERS[name](argv[1:])


def listen_port(services: dict, name: str) -> str:
    listen = parsed(services, name).listen
    return (listen[0] if isinstance(listen, list) else listen).rpartition(":")[2]


def default_services(services: dict) -> dict:
    """The services `docker compose up` starts: those outside every profile."""
    return {name: service for name, service in services.items() if not service.get("profiles")}


def test_three_services_from_one_image_built_here(services):
    # The daemons, their one-shot token writer and the HTTP gateway.
    assert set(default_services(services)) == {*SERVICES, "token", "gateway"}
    for service in default_services(services).values():
        assert service["image"] == "strata:local"
        assert service["build"]["context"] == "."
        assert interpolate(service["build"]["args"]["TORCH_INDEX"]).endswith("/whl/cpu")
    assert [services[name]["restart"] for name in SERVICES] == ["unless-stopped"] * len(SERVICES)


def test_redis_backing_is_a_profile_the_kvstore_reads_from_its_environment(services, monkeypatch):
    """`--profile redis` adds a Valkey server; the kvstore's --backing defaults to
    $STRATA_KVSTORE_BACKING, which compose leaves empty (no backing) unless it is set."""
    assert services["redis"]["profiles"] == ["redis"] and "ports" not in services["redis"]
    environment = services["kvstore"]["environment"]
    assert interpolate(environment["STRATA_KVSTORE_BACKING"]) == ""
    assert parsed(services, "kvstore").backing is None
    monkeypatch.setenv("STRATA_KVSTORE_BACKING", "redis://redis:6379")
    argv = command(services, "kvstore")
    assert kvstore_daemon.build_parser().parse_args(argv[1:]).backing == "redis://redis:6379"


def test_every_command_parses_with_its_daemon_parser(services):
    kvstore, executor, scheduler = (parsed(services, name) for name in SERVICES)
    assert kvstore.listen == ["0.0.0.0:50053"]
    assert not kvstore.insecure and kvstore.plain_tcp   # plain TCP on the private network, token required
    assert kvstore.ram == 2 << 30 and kvstore.disk == "/data/kvstore"
    assert services["kvstore"]["volumes"][0] == "kvstore-data:/data"   # the disk tier persists
    assert executor.listen == "0.0.0.0:50052" and executor.data_dir == Path("/data")
    assert executor.model == Path("/models") / DEFAULT_MODEL_NAME   # baked into the image
    assert (scheduler.executor, scheduler.kvstore, scheduler.listen) == \
        ("executor:50052", "kvstore:50053", ["0.0.0.0:50051"])
    assert scheduler.insecure and not scheduler.tls_cert   # plain TCP, published on loopback only


def test_executor_maps_the_kvstore_shared_memory(services):
    """Both mount one tmpfs volume at /dev/shm (not a shared IPC namespace, which a restarted
    kvstore would leave behind); it holds the whole RAM arena."""
    kvstore, executor = services["kvstore"], services["executor"]
    assert "shm:/dev/shm" in kvstore["volumes"] and "shm:/dev/shm" in executor["volumes"]
    assert "ipc" not in kvstore and "ipc" not in executor
    shm = yaml.safe_load((ROOT / "compose.yaml").read_text())["volumes"]["shm"]["driver_opts"]
    assert shm["type"] == shm["device"] == "tmpfs"
    shm_bytes = docker_bytes(interpolate(shm["o"]).removeprefix("size="))
    assert shm_bytes > parsed(services, "kvstore").ram, "/dev/shm must hold the whole RAM arena"
    assert "deploy" not in executor, "the base file must run on a host without a GPU"


def test_image_builds_the_native_kernels_for_a_baseline_cpu():
    """No executor start waits on a compiler: the image builds the CPU kernels for a baseline
    (x86-64-v3 unless KERNELS_MARCH says otherwise) that the executor then loads, and keeps a
    C++ compiler for an executor on a CPU the build does not fit."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"apt-get install [^\n]*\bg\+\+", dockerfile)
    assert set(re.findall(r"ARG KERNELS_MARCH=(\S+)", dockerfile)) == {"x86-64-v3"}
    assert "RUN python -m kernels" in dockerfile
    assert set(re.findall(r"STRATA_KERNELS_MARCH=(\S+)", dockerfile)) == {"${KERNELS_MARCH}"}
    assert set(re.findall(r"STRATA_EXTENSIONS_DIR=(\S+)", dockerfile)) == {"/opt/strata/kernels"}


def test_daemons_share_one_internal_token_written_before_they_start(services):
    """No daemon runs without the token: the token service writes it into a volume the daemons
    mount read-only; the kvstore (which the others wait for) starts once it completed."""
    token = services["token"]
    assert command(services, "token") == ["token", TOKEN_PATH] and token["restart"] == "no"
    assert token["volumes"] == ["secrets:/secrets"] and "secrets" in yaml.safe_load(
        (ROOT / "compose.yaml").read_text())["volumes"]
    assert token["environment"] == {"STRATA_INTERNAL_TOKEN": "${STRATA_INTERNAL_TOKEN:-}"}
    kvstore, executor, scheduler = (parsed(services, name) for name in SERVICES)
    assert (kvstore.token_file, executor.token_file, scheduler.internal_token_file) == (TOKEN_PATH,) * 3
    assert not kvstore.insecure and not executor.insecure and kvstore.token is None
    for name in SERVICES:
        assert "secrets:/secrets:ro" in services[name]["volumes"]
    assert services["kvstore"]["depends_on"]["token"] == {"condition": "service_completed_successfully"}


def test_gpu_override_gives_the_executor_a_gpu_and_a_cuda_build():
    override = yaml.safe_load((ROOT / "compose.gpu.yaml").read_text())["services"]
    gpu, = override["executor"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    for service in ("kvstore", "executor", "scheduler"):   # one image: the same build args
        assert override[service]["build"]["args"]["EXTRAS"] == "[gpu]"
        assert "cu12" in override[service]["build"]["args"]["TORCH_INDEX"]
    assert override["token"]["build"] == override["kvstore"]["build"]


def test_scheduler_alone_is_published_and_starts_after_healthy_daemons(services):
    assert [interpolate(port) for port in services["scheduler"]["ports"]] == ["127.0.0.1:50051:50051"]
    assert "ports" not in services["kvstore"] and "ports" not in services["executor"]
    assert services["scheduler"]["depends_on"] == {"kvstore": {"condition": "service_healthy"},
                                                   "executor": {"condition": "service_healthy"}}
    assert services["executor"]["depends_on"]["kvstore"]["condition"] == "service_healthy"
    # The scheduler reads the tokenizer from the executor's model path: same mount, same path.
    models_mount, = (volume for volume in services["executor"]["volumes"] if ":/models" in volume)
    assert models_mount in services["scheduler"]["volumes"]


def test_gateway_serves_the_scheduler_on_loopback_once_it_is_healthy(services):
    from strata.gateway.server import parse_args as gateway_args

    gateway = services["gateway"]
    args = gateway_args([interpolate(arg) for arg in gateway["command"][1:]])
    assert gateway["command"][0] == "gateway"
    assert (args.scheduler, args.host, args.port) == (f"scheduler:{listen_port(services, 'scheduler')}", "0.0.0.0", 8000)
    assert args.model_name == DEFAULT_MODEL_NAME
    assert [interpolate(port) for port in gateway["ports"]] == ["127.0.0.1:8000:8000"]
    assert gateway["depends_on"] == {"scheduler": {"condition": "service_healthy"}}
    assert gateway["environment"] == {"STRATA_API_KEY": "${STRATA_API_KEY:-}"}


@pytest.mark.parametrize("name", SERVICES)
def test_healthcheck_probes_the_daemon_readiness_on_its_own_port(services, name):
    probe = services[name]["healthcheck"]["test"]
    assert probe[:3] == ["CMD", "python", "-c"]
    assert probe[4:] == [f"127.0.0.1:{listen_port(services, name)}", READY_SERVICES[name]]


# --- the stack as local processes -------------------------------------------------------------

def localize(name: str, argv: list[str], addresses: dict[str, str], data_dir: Path,
             overrides: dict[str, str]) -> list[str]:
    """Rewrite what a container provides: hostnames, 0.0.0.0 listeners, /data, OVERRIDES' values
    (the token's path is the caller's: one file for every service)."""
    assert set(overrides) <= set(argv), f"{name}: only rewrite flags compose.yaml sets"
    local = []
    for previous, arg in zip([""] + argv, argv):
        if previous in overrides:
            arg = overrides[previous]
        elif arg.startswith("0.0.0.0:"):
            arg = addresses[f"{name}:{arg.rpartition(':')[2]}"]
        elif arg in addresses:
            arg = addresses[arg]
        elif arg == "/data" or arg.startswith("/data/"):
            arg = str(data_dir) + arg.removeprefix("/data")
        local.append(arg)
    return local


def local_commands(services: dict, run_dir: Path, model_dir: Path,
                   addresses: dict[str, str]) -> dict[str, list[str]]:
    token = str(run_dir / "secrets" / "internal-token")
    overrides = {"kvstore": {"--ram": "64MiB", "--token-file": token},
                 "executor": {"--model": str(model_dir), "--token-file": token},
                 "scheduler": {"--internal-token-file": token}}
    extra = {"kvstore": ["--shm-dir", str(run_dir / "shm")],
             "executor": ["--num-device-blocks", "64", "--num-threads", "1", *EXACT_DTYPE,
                          "--arena-dir", str(run_dir / "shm")], "scheduler": []}
    (run_dir / "shm").mkdir()
    commands = {name: localize(name, command(services, name), addresses, run_dir / name, overrides[name])
                + extra[name] for name in SERVICES}
    return {"token": [arg.replace(TOKEN_PATH, token) for arg in command(services, "token")], **commands}


def wait_healthy(probe: list[str], address: str, processes: list, run_dir: Path,
                 timeout_s: float = 60) -> None:
    """Run the service's own healthcheck (its python one-liner) against the local address."""
    argv = [sys.executable, "-c", probe[3], address, *probe[5:]]
    deadline = time.monotonic() + timeout_s
    while subprocess.run(argv, capture_output=True, timeout=30).returncode != 0:
        dead = [p.args for p in processes if p.poll() is not None]
        assert not dead, f"{dead} exited:\n{logs(run_dir)}"
        assert time.monotonic() < deadline, f"{probe[5]} not healthy in {timeout_s}s:\n{logs(run_dir)}"
        time.sleep(0.3)


def hf_greedy(model_dir: Path, prompt: list[int]) -> list[int]:
    import torch

    from checkpoints import load_hf_model

    input_ids = torch.tensor([prompt])
    with torch.no_grad():
        out = load_hf_model(model_dir).generate(
            input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
            max_new_tokens=MAX_TOKENS, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def generate(address: str, prompt: list[int]) -> tuple[list[int], int]:
    request = generation_pb2.GenerateRequest(
        tokens=generation_pb2.TokenIds(ids=prompt), sampling=common_pb2.SamplingParams(temperature=0.0),
        stopping=generation_pb2.StoppingCriteria(max_tokens=MAX_TOKENS, ignore_eos=True))
    tokens, reason = [], None
    with grpc.insecure_channel(address) as channel:
        for response in generation_pb2_grpc.GenerationStub(channel).Generate(request, timeout=60):
            tokens += response.token_ids
            reason = response.finish_reason
    return tokens, reason


def is_refused_without_token(name: str, address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        call = {"kvstore": lambda: kvstore_pb2_grpc.KVStoreStub(channel).Stats(kvstore_pb2.StatsRequest(), timeout=10),
                "executor": lambda: executor_pb2_grpc.ExecutorStub(channel).Describe(
                    executor_pb2.DescribeRequest(), timeout=10)}[name]
        try:
            call()
        except grpc.RpcError as error:
            return error.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


def test_compose_commands_serve_a_greedy_generate(services, llama_dir, tmp_path):
    addresses = {f"{name}:{listen_port(services, name)}": f"127.0.0.1:{free_port()}" for name in SERVICES}
    commands = local_commands(services, tmp_path, llama_dir, addresses)
    prompt = list(range(3, 23))
    processes, expected = [], None
    token_service = subprocess.run([*STRATA, *commands["token"]], capture_output=True, text=True,
                                   timeout=60, env=child_env())   # its restart: "no": it ran once
    assert token_service.returncode == 0, token_service.stderr
    try:
        for name in SERVICES:
            processes.append(spawn(commands[name], tmp_path / f"{name}.log"))
            if expected is None:
                expected = hf_greedy(llama_dir, prompt)   # overlaps the kvstore's start-up
            local_address = addresses[f"{name}:{listen_port(services, name)}"]
            wait_healthy(services[name]["healthcheck"]["test"], local_address, processes, tmp_path)
        for name in ("kvstore", "executor"):   # only the token's holders (the scheduler) get in
            assert is_refused_without_token(name, addresses[f"{name}:{listen_port(services, name)}"])
        tokens, reason = generate(local_address, prompt)   # the scheduler's, started last
        assert len(tokens) == MAX_TOKENS and tokens == expected
        assert reason == generation_pb2.FINISH_REASON_LENGTH
    finally:
        codes = stop_processes(processes[::-1], grace_s=10)
    assert codes == [0] * len(SERVICES), f"unclean shutdown {codes}:\n{logs(tmp_path)}"
