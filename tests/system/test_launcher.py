"""`strata up` as a process: serves, restarts a dead child, stops cleanly on SIGTERM;
`strata generate` streams from it; `strata demo` runs end to end."""
import os
import re
import signal
import subprocess
import sys
import time

import grpc
import pytest

from protos.v1 import generation_pb2
from servers import child_env, start_up, stop_processes

pytestmark = pytest.mark.system

STRATA = [sys.executable, "-m", "strata.cli"]


def child_pids(log_text: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in re.findall(r"started (\w+) \(pid (\d+)", log_text)}


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def generate_cli(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(STRATA + ["generate", "--server", address, *args], capture_output=True,
                          text=True, timeout=120, env=child_env())


def wait_for_line(path, text: str, timeout_s: float = 10) -> str:
    """The file's text once it holds `text`, or after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    return path.read_text()


def test_up_serves_restarts_a_dead_executor_and_stops_cleanly(llama_dir, tmp_path):
    with start_up(["--model", str(llama_dir), "--num-device-blocks", "64",
                   "--data-dir", str(tmp_path / "data"), "--kvstore-ram", "64MiB"]) as server:
        # The children start together: the public port may answer just before the launcher,
        # polling each child's readiness in turn, prints its line.
        up_log = wait_for_line(server.run_dir / "up.log", f"strata serving on {server.address}")
        assert f"strata serving on {server.address}" in up_log
        run_dirs = re.findall(r"unix:(\S+)/executor\.sock", (tmp_path / "data/logs/scheduler.log").read_text())
        pids = child_pids(up_log)
        assert set(pids) == {"kvstore", "executor", "scheduler"}

        result = generate_cli(server.address, "--tokens", "5,6,7", "--max-tokens", "12",
                              "--temperature", "0", "--ignore-eos")
        assert result.returncode == 0, result.stderr
        assert "[12 tokens, finish: length, cached: 0" in result.stderr

        os.kill(pids["executor"], signal.SIGKILL)   # the launcher restarts it; the scheduler reconnects
        deadline = time.monotonic() + 60
        while "started executor" not in (server.run_dir / "up.log").read_text().split(up_log, 1)[1]:
            assert time.monotonic() < deadline, "executor was not restarted"
            time.sleep(0.2)
        again = generate_cli(server.address, "--tokens", "5,6,7", "--max-tokens", "12",
                             "--temperature", "0", "--ignore-eos", "--timeout", "60")
        assert again.returncode == 0, again.stderr
        assert again.stdout == result.stdout

        (process,) = server.processes
        pids = child_pids((server.run_dir / "up.log").read_text())
        assert stop_processes([process], grace_s=30) == [0]
    assert not any(is_alive(pid) for pid in pids.values())
    assert run_dirs and not os.path.exists(run_dirs[0])


def test_generate_reports_bad_input_as_status(llama_dir, tmp_path):
    with start_up(["--model", str(llama_dir), "--num-device-blocks", "64",
                   "--data-dir", str(tmp_path / "data"), "--kvstore-ram", "64MiB"]) as server:
        result = generate_cli(server.address, "--tokens", "5", "--temperature", "-1")
        assert result.returncode == 1
        assert "INVALID_ARGUMENT: sampling.temperature = -1.0: must be >= 0" in result.stderr
        info = server.stub.GetModelInfo(generation_pb2.GetModelInfoRequest())
        assert info.architecture == "LlamaForCausalLM"


def test_demo_streams_one_completion_and_exits_zero(llama_dir, tmp_path):
    result = subprocess.run(STRATA + ["demo", "--model", str(llama_dir), "--num-device-blocks", "64",
                                      "--data-dir", str(tmp_path / "data"), "--max-tokens", "10"],
                            capture_output=True, text=True, timeout=300, env=child_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("strata serving on 127.0.0.1:")
    assert "def fibonacci(n):" in result.stdout
    assert "[10 tokens, finish: length" in result.stdout


def test_children_exit_when_the_launcher_is_killed(llama_dir, tmp_path):
    """kill -9 of `strata up`: its daemons get the parent-death SIGTERM and exit; none keeps
    serving unsupervised (a later `strata up` on the port would otherwise share it)."""
    with start_up(["--model", str(llama_dir), "--num-device-blocks", "64",
                   "--data-dir", str(tmp_path / "data"), "--kvstore-ram", "64MiB"]) as server:
        up_log = wait_for_line(server.run_dir / "up.log", f"strata serving on {server.address}")
        pids = child_pids(up_log)
        assert set(pids) == {"kvstore", "executor", "scheduler"}
        (process,) = server.processes
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 30
        while any(is_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [name for name, pid in pids.items() if is_alive(pid)]
