"""What a benchmark number depends on besides the code: machine, package versions, threads."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess

from runtime.machine import meminfo_bytes

PACKAGES = {"strata": "strata-serve", "torch": "torch", "grpcio": "grpcio",
            "transformers": "transformers", "numpy": "numpy", "protobuf": "protobuf"}
# The instructions that decide which dtype is fast here (MACHINE.md: bf16 is 3.6-6.8x fp32 with
# AMX, ~300x slower without bf16 instructions).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "TORCH_NUM_THREADS")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name, distribution in PACKAGES.items():
        try:
            versions[name] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def cpu_flags() -> set[str]:
    """Every flag /proc/cpuinfo lists for the first CPU (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def ram_bytes() -> int | None:
    return meminfo_bytes("MemTotal")


def gpus() -> list[str]:
    """`nvidia-smi -L` lines, or [] when there is no NVIDIA driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in listing.stdout.splitlines() if line.strip()] if listing.returncode == 0 else []


def machine() -> dict:
    flags = cpu_flags()
    return {"cpu_model": cpu_model(), "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags],
            "num_cpus": os.cpu_count(),
            "num_cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "ram_bytes": ram_bytes(), "gpus": gpus(), "platform": platform.platform(),
            "python": platform.python_version()}


def machine_summary(machine: dict) -> str:
    """'CPU model (its flags of CPU_FLAGS), N cores, GPUs or no GPU': how benchmarks print the
    machine (`machine()`'s dict, possibly read back from a JSON document)."""
    gpus = ", ".join(machine["gpus"]) or "no GPU"
    flags = ", ".join(machine.get("cpu_flags") or []) or f"none of {', '.join(CPU_FLAGS)}"
    return f"{machine['cpu_model']} ({flags}), {machine['num_cpus']} cores, {gpus}"


def thread_settings() -> dict[str, str | None]:
    """Thread-related environment of this process (the launched servers inherit it)."""
    return {name: os.environ.get(name) for name in THREAD_VARIABLES}
