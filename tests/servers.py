"""Start Strata daemons as real processes for tests, and stop them by PID.

    with start_daemons(model_dir, num_device_blocks=256) as server:   # executor + scheduler
        server.stub.Generate(...)
    with start_up(["--model", str(model_dir)]) as server:              # `strata up`
        ...

Unix sockets live in a short private dir under the system temp dir (socket paths are limited
to ~107 bytes; pytest's tmp_path can be longer). Logs go to files in that dir and are printed
when start-up fails.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from internal_token import TOKEN, TOKEN_FILE
from protos.v1 import generation_pb2_grpc, kvstore_pb2
from runtime.kvstore_client import KVStoreClient
from strata.launcher import is_http_ready
from strata.supervisor import stop_processes  # noqa: F401 - tests import it from here

READY_SERVICE = "strata.v1.Generation"
STRATA = [sys.executable, "-m", "strata.cli"]


@dataclass
class Server:
    address: str
    channel: grpc.Channel
    stub: generation_pb2_grpc.GenerationStub
    processes: list[subprocess.Popen] = field(default_factory=list)
    run_dir: Path | None = None
    kvstore_argv: list[str] | None = None     # how the kvstore child was started (to restart it)

    def restart_kvstore(self) -> subprocess.Popen:
        """Start the kvstore again with the same flags (after a test killed it)."""
        process = spawn(self.kvstore_argv, self.run_dir / "kvstore.log")
        self.processes.insert(0, process)
        return process


# Servers compute in fp32 unless a test says otherwise (a later --dtype wins): the tests compare
# tokens with transformers in fp32, and --dtype auto is bf16 on CPUs with AMX or AVX512-BF16.
EXACT_DTYPE = ("--dtype", "float32")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    return env


def spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")
    return subprocess.Popen(STRATA + args, stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                            start_new_session=True)


def wait_ready(address: str, processes: list[subprocess.Popen], run_dir: Path,
               timeout_s: float = 120, service: str = READY_SERVICE) -> grpc.Channel:
    """Poll grpc.health.v1 readiness of `service` (strata.v1.Generation) until SERVING."""
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args} exited with {process.returncode}:\n{logs(run_dir)}")
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return channel
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{address} not ready after {timeout_s}s:\n{logs(run_dir)}")


def logs(run_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                     for p in sorted(run_dir.glob("*.log")))


@contextlib.contextmanager
def start_daemons(model_dir: Path, *, num_device_blocks: int = 512, block_size: int = 16,
                  executor_args: tuple[str, ...] = (), scheduler_args: tuple[str, ...] = (),
                  kvstore_args: tuple[str, ...] | None = None) -> Iterator[Server]:
    """The executor and the scheduler as two processes on a unix socket; with kvstore_args, a
    kvstore too (its arena files in the run dir, "{run_dir}" in an argument is replaced by
    that dir) and the scheduler offloads to it."""
    run_dir = Path(tempfile.mkdtemp(prefix="st"))
    socket_path = run_dir / "ex.sock"
    address = f"127.0.0.1:{free_port()}"
    processes, kvstore_argv = [], None
    if kvstore_args is not None:
        kvstore_socket = f"unix:{run_dir / 'kv.sock'}"
        kvstore_argv = ["kvstore", "--listen", kvstore_socket, "--shm-dir", str(run_dir), "--token-file", TOKEN_FILE,
                        *(arg.replace("{run_dir}", str(run_dir)) for arg in kvstore_args)]
        processes.append(spawn(kvstore_argv, run_dir / "kvstore.log"))
        scheduler_args = ("--kvstore", kvstore_socket, *scheduler_args)
    processes.append(spawn(["executor", "--listen", f"unix:{socket_path}", "--model", str(model_dir),
                            "--data-dir", str(run_dir / "data"), "--num-threads", "1", *EXACT_DTYPE,
                            "--num-device-blocks", str(num_device_blocks), "--block-size", str(block_size),
                            "--token-file", TOKEN_FILE, "--arena-dir", str(run_dir),
                            *executor_args], run_dir / "executor.log"))
    try:
        processes.append(spawn(["scheduler", "--executor", f"unix:{socket_path}", "--listen", address,
                                "--internal-token-file", TOKEN_FILE, *scheduler_args], run_dir / "scheduler.log"))
        channel = wait_ready(address, processes, run_dir)
        yield Server(address, channel, generation_pb2_grpc.GenerationStub(channel), processes, run_dir,
                     kvstore_argv)
        channel.close()
    finally:
        stop_processes(processes[::-1], grace_s=10)
        shutil.rmtree(run_dir, ignore_errors=True)


@contextlib.contextmanager
def start_up(args: list[str], timeout_s: float = 180) -> Iterator[Server]:
    """`strata up ARGS` as one process (it starts and supervises its own children)."""
    run_dir = Path(tempfile.mkdtemp(prefix="st"))
    port = free_port()
    # No HTTP gateway unless the test asks for one (a later --http-port wins).
    process = spawn(["up", "--port", str(port), "--http-port", "0", *EXACT_DTYPE, *args], run_dir / "up.log")
    try:
        channel = wait_ready(f"127.0.0.1:{port}", [process], run_dir, timeout_s)
        yield Server(f"127.0.0.1:{port}", channel, generation_pb2_grpc.GenerationStub(channel),
                     [process], run_dir)
        channel.close()
    finally:
        stop_processes([process], grace_s=30)
        shutil.rmtree(run_dir, ignore_errors=True)


def kvstore_stats(server: Server) -> kvstore_pb2.StatsResponse:
    """The Stats of the kvstore start_daemons started (kvstore_args)."""
    return _ask_kvstore(server, KVStoreClient.stats)


def kvstore_metrics(server: Server) -> str:
    """That kvstore's Prometheus text (GetMetrics)."""
    return _ask_kvstore(server, KVStoreClient.metrics)


def _ask_kvstore(server: Server, call):
    client = KVStoreClient(server.kvstore_argv[2], token=TOKEN, timeout_s=5)
    try:
        return call(client)
    finally:
        client.close()


def wait_http_ready(url: str, timeout_s: float = 60) -> None:
    """Poll an HTTP readiness URL (a gateway's /health) until it answers 200, as `strata up`
    does before it says it serves."""
    deadline = time.monotonic() + timeout_s
    while not is_http_ready(url):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready in {timeout_s:.0f} s")
        time.sleep(0.2)
