"""Helpers for the kvstore's tests and benchmark: deterministic pages, daemons by PID."""
import hashlib
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import grpc

from kvstore.daemon import build_server
from kvstore.store import Store


def key_of(name: str | int) -> bytes:
    return hashlib.sha256(str(name).encode()).digest()


def page_of(key: bytes, page_bytes: int) -> bytes:
    """Bytes that depend on the key, so a page returned under the wrong key is caught."""
    pattern = hashlib.sha256(b"page" + key).digest()
    return (pattern * (page_bytes // len(pattern) + 1))[:page_bytes]


def serve_in_process(store: Store, address: str, token: str | None = None) -> grpc.Server:
    """A KVStore server over `store` in this process (threads), on a unix socket or port."""
    class Args:
        pass
    args = Args()
    args.token = token
    server, _ = build_server(store, args)
    server.add_insecure_port(address)
    server.start()
    return server


@dataclass
class Daemon:
    """A `strata kvstore` subprocess; stop() ends it by PID."""

    process: subprocess.Popen
    lines: "queue.Queue[str]" = field(default_factory=queue.Queue)
    output: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_for(self, prefix: str, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if line.startswith(prefix):
                return line
        raise RuntimeError(f"kvstore never printed {prefix!r}; output: {self.output}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_daemon(args: list[str], prefix_command: list[str] = (), env: dict | None = None) -> Daemon:
    """Start `python -m strata.cli kvstore ARGS` and wait until it listens."""
    command = [*prefix_command, sys.executable, "-m", "strata.cli", "kvstore", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, **(env or {})})
    daemon = Daemon(process)

    def pump() -> None:
        for line in process.stdout:
            daemon.output.append(line.rstrip())
            daemon.lines.put(line.rstrip())
    threading.Thread(target=pump, daemon=True).start()
    daemon.wait_for("kvstore: listening on")
    return daemon
