"""Child daemons of `strata up`: start together, wait for readiness, restart with backoff, stop.

A child killed by a signal while starting (kill -9, the OOM killer while it loads the model, a
crash) is started again with the same backoff as after start-up, up to MAX_START_ATTEMPTS starts;
one that exits by itself (it says why: a bad flag, a broken checkpoint) ends `strata up` at once
with its log's tail. While a child
is not ready yet, a line every PROGRESS_SECONDS (the first after 2 s) says what it is doing (its log's last line).

Each child is a `strata <daemon> ...` process in its own session (Ctrl-C reaches only the
launcher, which then stops the children in reverse start order: SIGTERM, then SIGKILL after a
grace period).
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger("strata.up")

STOP_GRACE_SECONDS = 10.0
PR_SET_PDEATHSIG = 1   # <linux/prctl.h>
MAX_BACKOFF_SECONDS = 30.0
MAX_START_ATTEMPTS = 4
FIRST_PROGRESS_SECONDS, PROGRESS_SECONDS = 2.0, 5.0
LOG_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")   # runtime.logs' line prefix


@dataclass(slots=True)
class ChildSpec:
    name: str                 # "kvstore", "executor", "scheduler", "gateway"
    argv: list[str]           # arguments after `strata`
    health_target: str        # where its grpc.health.v1 answers
    ready_service: str        # readiness service name, e.g. "strata.v1.Executor"
    ready_timeout_s: float = 600.0
    # Called with the pid of a child that exited, once it is reaped (e.g. remove a dead
    # kvstore's arena files, whose RAM tmpfs keeps until they are unlinked).
    on_exit: Callable[[int], None] | None = None
    # Readiness for a child that is not a gRPC server (the HTTP gateway); None: grpc.health.v1.
    ready_probe: Callable[[], bool] | None = None
    # Set in the child's environment on top of the launcher's (a secret kept out of argv, where
    # `ps` shows it).
    env: dict[str, str] = field(default_factory=dict)

    def check_ready(self) -> bool:
        if self.ready_probe is not None:
            return self.ready_probe()
        return is_ready(self.health_target, self.ready_service)


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
        """Spawn every child at once, then block until each is ready, in order (a child killed
        while starting is started again; RuntimeError when one cannot start). Each waits for what it needs by itself (the scheduler retries the
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
                                         start_new_session=True, preexec_fn=exit_with_parent(os.getpid()),
                                         env={**os.environ, **child.spec.env})
        log_file.close()
        log.info("started %s (pid %d, log %s)", child.spec.name, child.process.pid, child.log_path)

    def _wait_ready(self, child: Child, should_stop) -> None:
        started = time.monotonic()
        deadline, next_progress = started + child.spec.ready_timeout_s, started + FIRST_PROGRESS_SECONDS
        while not child.spec.check_ready():
            now = time.monotonic()
            if child.process.poll() is not None:
                self._restart_while_starting(child, should_stop)
                deadline = time.monotonic() + child.spec.ready_timeout_s
            elif now > deadline or should_stop():
                raise RuntimeError(f"{child.spec.name} not ready after {child.spec.ready_timeout_s}s; "
                                   f"its log:\n{tail(child.log_path)}")
            elif now >= next_progress:
                next_progress = now + PROGRESS_SECONDS
                log.info("waiting for %s (pid %d, %.0fs): %s", child.spec.name, child.process.pid,
                         now - started, last_line(child.log_path))
            time.sleep(0.2)

    def _restart_while_starting(self, child: Child, should_stop) -> None:
        """The child died before it was ready: start it again after the backoff when a signal
        killed it, else (or after MAX_START_ATTEMPTS starts) give up: RuntimeError with its log."""
        code = child.process.returncode
        if code >= 0 or child.num_restarts + 1 >= MAX_START_ATTEMPTS or should_stop():
            raise RuntimeError(f"{child.spec.name} exited with code {code} while starting "
                               f"({child.num_restarts + 1} attempts); its log:\n{tail(child.log_path)}")
        self._reaped(child)
        delay = backoff_seconds(child.num_restarts)
        log.error("%s exited with code %s while starting; starting it again in %.0fs (attempt %d of "
                  "%d; log: %s)", child.spec.name, code, delay, child.num_restarts + 2,
                  MAX_START_ATTEMPTS, child.log_path)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not should_stop():
            time.sleep(0.1)
        if should_stop():
            raise RuntimeError(f"stopped while {child.spec.name} was starting")
        child.num_restarts += 1
        self._spawn(child)

    def restart_dead_children(self) -> None:
        """Call periodically: a child that died is restarted after 1, 2, 4 ... 30 s."""
        now = time.monotonic()
        for child in self.children:
            if child.process.poll() is None:
                continue
            if child.restart_at is None:
                self._reaped(child)
                delay = backoff_seconds(child.num_restarts)
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
        for child in self.children:
            if child.process is not None:
                self._reaped(child)

    @staticmethod
    def _reaped(child: Child) -> None:
        if child.spec.on_exit is not None:
            child.spec.on_exit(child.process.pid)


def backoff_seconds(num_restarts: int) -> float:
    """1, 2, 4 ... 30 s before the next start of a child that died num_restarts times."""
    return min(2.0 ** num_restarts, MAX_BACKOFF_SECONDS)


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


def last_line(path: Path, max_chars: int = 200) -> str:
    """The log's last non-empty line (what a starting daemon is doing), without its timestamp."""
    lines = [line for line in tail(path, 4000).splitlines() if line.strip()]
    return LOG_TIME.sub("", lines[-1])[:max_chars] if lines else "(nothing logged yet)"


def tail(path: Path, num_chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-num_chars:]
    except OSError:
        return "(no log)"
