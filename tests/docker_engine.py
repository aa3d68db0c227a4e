"""A Docker engine for the compose test: the one DOCKER_HOST (or the default socket) names when it
answers, else, as root, a private dockerd this process starts and stops by PID.

The private engine keeps its images under ~/.cache/strata/docker (so a second run reuses the
base image and the image's layers) and everything of one run (sockets, containerd's state)
in a short temp dir. It uses the overlay2 storage driver where the kernel mounts overlayfs and
vfs elsewhere (vfs copies the whole image for every layer and container: about 30 GB of disk
for one build and compose run, and minutes of copying); no iptables rules and no default bridge
(compose makes its own network).
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
STORAGE_DRIVERS = ("overlay2", "vfs")


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
    for driver in STORAGE_DRIVERS:
        run_dir = Path(tempfile.mkdtemp(prefix="strata-docker-"))   # short: it holds sockets
        env["DOCKER_HOST"] = f"unix://{run_dir / 'docker.sock'}"
        engine = start_dockerd(driver, data_root, run_dir, env)
        try:
            if wait_answers(engine, env, run_dir):
                yield env
                return
        finally:
            stop_dockerd(engine, run_dir)
    raise AssertionError(f"dockerd started with none of {STORAGE_DRIVERS}")


def start_dockerd(driver: str, data_root: Path, run_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    argv = ["dockerd", "--storage-driver", driver, "--iptables=false", "--bridge", "none",
            "--data-root", str(data_root), "--exec-root", str(run_dir / "exec"),
            "--pidfile", str(run_dir / "docker.pid"), "-H", env["DOCKER_HOST"]]
    with open(run_dir / "dockerd.log", "wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_answers(engine: subprocess.Popen, env: dict[str, str], run_dir: Path) -> bool:
    """True once it answers; False when it exited (e.g. a storage driver this kernel lacks)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers(env):
        if engine.poll() is not None:
            return False
        assert time.monotonic() < deadline, (f"dockerd not answering in {START_TIMEOUT_S} s:\n"
                                             f"{(run_dir / 'dockerd.log').read_text()[-3000:]}")
        time.sleep(0.5)
    return True


def stop_dockerd(engine: subprocess.Popen, run_dir: Path) -> None:
    """SIGTERM (it stops its containerd and containers), SIGKILL after a minute; then unmount
    what it left mounted under its exec root (its network namespace) and remove the run dir."""
    engine.send_signal(signal.SIGTERM)
    try:
        engine.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(engine.pid, signal.SIGKILL)
        engine.wait()
    with open("/proc/self/mounts") as mounts:
        leftovers = [line.split()[1] for line in mounts if line.split()[1].startswith(str(run_dir))]
    for mount_point in reversed(leftovers):
        subprocess.run(["umount", mount_point], capture_output=True)
    shutil.rmtree(run_dir, ignore_errors=True)
