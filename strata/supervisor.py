"""Child daemons of `strata up`: start together, wait for readiness, restart with backoff, stop.

Each child is a `strata <daemon> ...` process in its own session (Ctrl-C reaches only the
launcher, which then stops the children in reverse start order: SIGTERM, then SIGKILL after a
grace period).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger("strata.up")

STOP_GRACE_SECONDS = 10.0
PR_SET_PDEATHSIG = 1   # <linux/prctl.h>
MAX_BACKOFF_SECONDS = 30.0


@dataclass(slots=True)
class ChildSpec:
    name: str                 # "executor", "scheduler" (later: "kvstore")
    argv: list[str]           # arguments after `strata`
    health_target: str        # where its grpc.health.v1 answers
    ready_service: str        # readiness service name, e.g. "strata.v1.Executor"
    ready_timeout_s: float = 600.0


@dataclass(slots=True)
class Child:
    spec: ChildSpec
    log_path: Path
    process: subprocess.Popen | None = None
    num_restarts: int = 0
    restart_at: float | None = None


def is_ready(target: str, service: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1.0)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@dataclass
class Supervisor:
    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, specs: list[ChildSpec], should_stop=lambda: False) -> None:
        """Spawn every child at once, then block until each is ready, in order (RuntimeError if
        one dies first). Each waits for what it needs by itself (the scheduler retries the
        executor and the kvstore), so their start-ups overlap: torch's import and the model
        load in the executor, the tokenizer in the scheduler, the arena in the kvstore."""
        started = [Child(spec, self.log_dir / f"{spec.name}.log") for spec in specs]
        self.children.extend(started)
        for child in started:
            self._spawn(child)
        for child in started:
            self._wait_ready(child, should_stop)

    def _spawn(self, child: Child) -> None:
        log_file = open(child.log_path, "ab")
        command = [sys.executable, "-m", "strata.cli", *child.spec.argv]
        child.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=exit_with_parent(os.getpid()))
        log_file.close()
        log.info("started %s (pid %d, log %s)", child.spec.name, child.process.pid, child.log_path)

    def _wait_ready(self, child: Child, should_stop) -> None:
        deadline = time.monotonic() + child.spec.ready_timeout_s
        while not is_ready(child.spec.health_target, child.spec.ready_service):
            if child.process.poll() is not None:
                raise RuntimeError(f"{child.spec.name} exited with code {child.process.returncode}; "
                                   f"its log:\n{tail(child.log_path)}")
            if time.monotonic() > deadline or should_stop():
                raise RuntimeError(f"{child.spec.name} not ready after {child.spec.ready_timeout_s}s")
            time.sleep(0.2)

    def restart_dead_children(self) -> None:
        """Call periodically: a child that died is restarted after 1, 2, 4 ... 30 s."""
        now = time.monotonic()
        for child in self.children:
            if child.process.poll() is None:
                continue
            if child.restart_at is None:
                delay = min(2.0 ** child.num_restarts, MAX_BACKOFF_SECONDS)
                child.restart_at = now + delay
                log.error("%s exited with code %s; restarting in %.0fs (log: %s)", child.spec.name,
                          child.process.returncode, delay, child.log_path)
            elif now >= child.restart_at:
                child.num_restarts += 1
                child.restart_at = None
                self._spawn(child)

    def stop_all(self) -> None:
        """Stop every child, in reverse start order (see stop_processes)."""
        stop_processes([c.process for c in reversed(self.children) if c.process is not None],
                       STOP_GRACE_SECONDS)


def exit_with_parent(parent_pid: int):
    """A preexec_fn: the child gets SIGTERM when the launcher dies, even by kill -9 (Linux's
    parent-death signal), so no daemon keeps serving unsupervised or holds its port and arena
    (SIGTERM: each drains and removes its files). Elsewhere a no-op."""
    def set_parent_death_signal() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent_pid:   # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return set_parent_death_signal


def stop_processes(processes: list[subprocess.Popen], grace_s: float) -> list[int | None]:
    """SIGTERM each live process by PID (in the given order), give them grace_s seconds in
    total to exit, SIGKILL the rest. Returns each process's exit code, in the given order
    (negative: killed by that signal). Processes that already exited are only reaped, so
    stopping a list twice is safe."""
    for process in processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop in %.0fs; killing it", process.pid, grace_s)
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    return [process.returncode for process in processes]


def tail(path: Path, num_chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-num_chars:]
    except OSError:
        return "(no log)"
