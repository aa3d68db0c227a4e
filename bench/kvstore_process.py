"""A `strata kvstore` process for the kvstore's tests and benchmark, started and stopped by PID."""
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field


@dataclass
class KVStoreProcess:
    """A `strata kvstore` subprocess; stop() ends it by PID."""

    process: subprocess.Popen
    lines: "queue.Queue[str]" = field(default_factory=queue.Queue)
    output: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_for(self, text: str, timeout_s: float = 30.0) -> str:
        """The first line (from now) that holds `text`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if text in line:
                return line
        raise RuntimeError(f"kvstore never printed {text!r}; output: {self.output}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_daemon(args: list[str], prefix_command: list[str] = (), env: dict | None = None) -> KVStoreProcess:
    """Start `python -m strata.cli kvstore ARGS` and wait until it listens."""
    command = [*prefix_command, sys.executable, "-m", "strata.cli", "kvstore", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, **(env or {})})
    daemon = KVStoreProcess(process)

    def pump() -> None:
        for line in process.stdout:
            daemon.output.append(line.rstrip())
            daemon.lines.put(line.rstrip())
    threading.Thread(target=pump, daemon=True).start()
    daemon.wait_for("strata.kvstore INFO listening on")
    return daemon
