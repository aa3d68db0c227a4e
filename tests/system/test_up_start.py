"""`strata up` while its children start and die: an executor killed while it loads is started again and
the server then serves the right tokens; one that exits by itself fails the start at once; the
launcher says what it waits for; a killed kvstore's arena files are removed by the launcher."""
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from checkpoints import load_hf_model
from greedy_parity import generate_tokens, hf_greedy
from protos.v1 import generation_pb2_grpc
from servers import EXACT_DTYPE, free_port, spawn, stop_processes, wait_ready

pytestmark = pytest.mark.system

PROMPT = [5, 6, 7, 8, 9]
MAX_TOKENS = 12


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def greedy_tokens(stub) -> list[int]:
    return generate_tokens(stub, PROMPT, MAX_TOKENS)[0]


def test_an_executor_killed_while_loading_is_started_again_and_serves_the_right_tokens(llama_dir):
    run_dir = Path(tempfile.mkdtemp(prefix="st"))
    port = free_port()
    up_log, executor_log = run_dir / "up.log", run_dir / "data" / "logs" / "executor.log"
    process = spawn(["up", "--http-port", "0", "--port", str(port), *EXACT_DTYPE, "--model", str(llama_dir),
                     "--num-device-blocks", "64", "--data-dir", str(run_dir / "data"),
                     "--kvstore-ram", "64MiB"], up_log)
    try:
        # Listening but not ready: the executor is loading the model.
        wait_for(lambda: "loading the model" in read(executor_log), 120, "the executor to load")
        pid = int(re.search(r"started executor \(pid (\d+)", read(up_log)).group(1))
        os.kill(pid, signal.SIGKILL)
        channel = wait_ready(f"127.0.0.1:{port}", [process], run_dir, timeout_s=180)
        tokens = greedy_tokens(generation_pb2_grpc.GenerationStub(channel))
        channel.close()
        # The public port may answer just before the launcher, polling each child, prints its line.
        log_text = wait_for(lambda: "strata serving on" in read(up_log) and read(up_log), 10,
                            "the serving line")
        assert "executor exited with code -9 while starting; starting it again in 1s (attempt 2 of 4" \
            in log_text
        assert len(re.findall(r"started executor \(pid", log_text)) == 2
        assert re.search(r"waiting for (kvstore|executor|scheduler) \(pid \d+, \d+s\): ", log_text)
        assert f"strata serving on 127.0.0.1:{port}" in log_text
    finally:
        assert stop_processes([process], grace_s=30) == [0]
        shutil.rmtree(run_dir, ignore_errors=True)
    model = load_hf_model(llama_dir)
    model.generation_config.eos_token_id = None
    assert tokens == hf_greedy(model, PROMPT, MAX_TOKENS)


def test_an_executor_that_cannot_start_ends_the_start_at_once(tmp_path):
    up_log = tmp_path / "up.log"
    started = time.monotonic()
    process = spawn(["up", "--http-port", "0", "--port", str(free_port()), "--model", str(tmp_path / "no-such-model"),
                     "--data-dir", str(tmp_path / "data"), "--no-kvstore"], up_log)
    assert process.wait(timeout=120) == 1
    log_text = read(up_log)
    assert "executor exited with code 1 while starting (1 attempts); its log:" in log_text
    assert "no-such-model" in log_text
    assert "starting it again" not in log_text
    assert time.monotonic() - started < 60


def test_a_killed_kvstores_arena_is_removed_by_the_launcher(llama_dir):
    """kill -9 of the kvstore leaves its RAM arena in /dev/shm; `strata up` sees it die, unlinks
    its files before starting the next one, and the server keeps serving."""
    run_dir = Path(tempfile.mkdtemp(prefix="st"))
    port = free_port()
    up_log = run_dir / "up.log"
    process = spawn(["up", "--http-port", "0", "--port", str(port), *EXACT_DTYPE, "--model", str(llama_dir),
                     "--num-device-blocks", "64", "--data-dir", str(run_dir / "data"),
                     "--kvstore-ram", "64MiB"], up_log)
    try:
        channel = wait_ready(f"127.0.0.1:{port}", [process], run_dir, timeout_s=180)
        stub = generation_pb2_grpc.GenerationStub(channel)
        before = greedy_tokens(stub)   # registers: the arena file exists from here on
        pid = int(re.search(r"started kvstore \(pid (\d+)", read(up_log)).group(1))
        arenas = wait_for(lambda: [n for n in os.listdir("/dev/shm") if n.startswith(f"strata-kv-{pid}-")],
                          30, "the kvstore's arena file")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: f"removed the arena files of the dead kvstore (pid {pid})" in read(up_log), 30,
                 "the launcher to remove the arena")
        assert not [name for name in arenas if os.path.exists(f"/dev/shm/{name}")]
        assert greedy_tokens(stub) == before
        channel.close()
    finally:
        assert stop_processes([process], grace_s=30) == [0]
        shutil.rmtree(run_dir, ignore_errors=True)
