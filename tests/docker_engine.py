"""A Docker engine for the compose test: the one DOCKER_HOST (or the default socket) names when it
answers, else, as root, a private dockerd this process starts and stops by PID.

The private engine keeps its images under ~/.cache/strata/docker (so a second run reuses the
base image and the image's layers) and everything of one run (sockets, containerd's state)
in a short temp dir. Its flags are the ones this machine kind needs: the vfs storage driver
(no overlayfs inside this machine's container), no iptables rules, no default bridge (compose
makes its own network).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

START_TIMEOUT_S = 60


def answers(env: dict[str, str]) -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], env=env, capture_output=True, timeout=60).returncode == 0


def why_no_engine() -> str | None:
    """None when an engine answers or can be started here, else the reason there is none."""
    if shutil.which("docker") is None:
        return "no docker command (apt-get install docker.io)"
    if answers(dict(os.environ)):
        return None
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        return "no Docker engine answers and none can be started (needs root and dockerd)"
    return None


@contextlib.contextmanager
def docker_engine() -> Iterator[dict[str, str]]:
    """The environment (DOCKER_HOST included) of an engine that answers, for the block's length."""
    env = dict(os.environ)
    if answers(env):
        yield env
        return
    data_root = Path.home() / ".cache" / "strata" / "docker"
    data_root.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="strata-docker-"))   # short: it holds sockets
    env["DOCKER_HOST"] = f"unix://{run_dir / 'docker.sock'}"
    argv = ["dockerd", "--storage-driver", "vfs", "--iptables=false", "--bridge", "none",
            "--data-root", str(data_root), "--exec-root", str(run_dir / "exec"),
            "--pidfile", str(run_dir / "docker.pid"), "-H", env["DOCKER_HOST"]]
    with open(run_dir / "dockerd.log", "wb") as log:
        engine = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(env):
            assert engine.poll() is None, f"dockerd exited:\n{(run_dir / 'dockerd.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"dockerd not answering in {START_TIMEOUT_S} s"
            time.sleep(0.5)
        yield env
    finally:
        engine.send_signal(signal.SIGTERM)   # it stops its containerd and its containers
        try:
            engine.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(engine.pid, signal.SIGKILL)
            engine.wait()
        shutil.rmtree(run_dir, ignore_errors=True)
