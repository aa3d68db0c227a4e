"""Start `strata up` as a child process for one benchmark configuration and stop it by PID.

The server's stdout and stderr go to a log file (a pipe nobody reads would fill and block it);
when it fails to become ready, the log's tail is in the error.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "strata.v1.Generation"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_ready(target: str, timeout_s: float = 2.0) -> bool:
    """Whether the server reports SERVING for strata.v1.Generation."""
    try:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=timeout_s)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


class LaunchError(RuntimeError):
    pass


class ServerProcess:
    """`with ServerProcess(args) as server:` runs `strata up --port P ARGS` until the block ends.

    server.target is "127.0.0.1:P". Start waits for readiness (health) at most ready_timeout_s;
    stop sends SIGTERM to the PID and SIGKILL after stop_timeout_s.
    """

    def __init__(self, server_args: list[str], ready_timeout_s: float = 600.0,
                 stop_timeout_s: float = 60.0, log_dir: str | None = None):
        self.server_args = list(server_args)
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        log_dir = log_dir or tempfile.mkdtemp(prefix="strata-bench-")
        if "--data-dir" not in self.server_args:   # a fresh disk tier: no pages of earlier runs
            self.server_args += ["--data-dir", str(Path(log_dir) / f"data-{self.port}")]
        self.log_path = Path(log_dir) / f"server-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "strata.cli", "up", "--port", str(self.port), *self.server_args]

    def start(self) -> None:
        started = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=os.environ.copy())
        while not is_ready(self.target):
            if self.process.poll() is not None:
                raise LaunchError(f"`strata up` exited with {self.process.returncode} before it was "
                                  f"ready; command {self.command}\n{self.log_tail()}")
            if time.perf_counter() - started > self.ready_timeout_s:
                self.stop()
                raise LaunchError(f"`strata up` not ready after {self.ready_timeout_s:.0f} s "
                                  f"(raise --launch-timeout)\n{self.log_tail()}")
            time.sleep(0.25)
        self.startup_s = time.perf_counter() - started

    def stop(self) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code (None if never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_tail(self, num_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-num_chars:]
        except OSError:
            return "(no server log)"

    def __enter__(self) -> "ServerProcess":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
