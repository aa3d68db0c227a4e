"""What a CUDA host can tell us about Strata in under 8 minutes, printed as one table.

    python -m bench.gpu_check [--model DIR] [--work-dir DIR]

1. tests: pytest on every test file with a test skipped without CUDA (CUDA_SKIP in its
   source: tests/kernels/test_kernels_triton.py today), with TRITON_INTERPRET=0, not unset:
   conftest.py turns the interpreter on when the variable is unset, and here the kernels must
   compile.
2. kernels: paged attention, decode and tiled prefill, bf16, 32/8 heads x head_dim 128, 64-256
   sequences x 512-4096 tokens, against a copy-bandwidth probe (bench/gpu_kernels.py).
3. serve: `strata bench --workload random --launch` on the 100M random Llama of
   `python -m bench.make_model` (built into --work-dir unless --model names one), bf16.

Every step has a time cap inside TOTAL_BUDGET_S; a step that fails or runs out of time is a
row saying so, and the steps after it still run. Where torch.cuda.is_available() is False it
says that it needs CUDA and exits 0. Exit status 1 when a step failed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

ROOT = Path(__file__).resolve().parents[1]
TOTAL_BUDGET_S = 450.0          # 7.5 minutes: the whole check stays under 8
TESTS_TIMEOUT_S = 150.0
SERVE_RESERVE_S = 200.0         # kept for step 3 while steps 1 and 2 run
MAKE_MODEL_TIMEOUT_S = 120.0
SERVE_ARGS = ["--workload", "random", "--num-prompts", "128", "--input-len", "64:512", "--output-len", "32:128",
              "--dtype", "bfloat16", "--num-device-blocks", "8192", "--kvstore-disk", "0", "--no-progress"]
CUDA_SKIP = "skipif(not torch.cuda.is_available()"
COLUMNS = ("section", "case", "time", "GB/s", "of probe", "other")


class Row(NamedTuple):
    section: str
    case: str
    time: str = ""
    gb_per_s: str = ""
    of_probe: str = ""
    other: str = ""
    is_failure: bool = False


def format_table(card: str, rows: list[Row]) -> str:
    """The card's name, then one aligned line per row under COLUMNS."""
    cells = [COLUMNS] + [row[:len(COLUMNS)] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join([f"strata gpu_check on {card}", *lines])


def parse_pytest_counts(output: str) -> dict[str, int]:
    """Outcome counts from pytest's last summary line, e.g. {"passed": 14, "skipped": 33}."""
    pattern = r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)\b"
    summary = next((line for line in reversed(output.splitlines()) if re.search(pattern, line)), "")
    return {"error" if word == "errors" else word: int(number) for number, word in re.findall(pattern, summary)}


def cuda_test_files(tests_dir: Path) -> list[Path]:
    """Test files with a test skipped where CUDA is missing (`skipif(not torch.cuda.is_available()`)."""
    return sorted(p for p in tests_dir.rglob("test_*.py") if CUDA_SKIP in p.read_text())


class Deadline:
    def __init__(self, budget_s: float):
        self.end = time.monotonic() + budget_s

    def left(self) -> float:
        return self.end - time.monotonic()


class ChildResult(NamedTuple):
    exit_code: int | None     # None: killed at its timeout
    output: str               # stdout, then stderr
    seconds: float


def run_child(argv: list[str], timeout_s: float) -> ChildResult:
    """Run argv in ROOT (so the packages import from this checkout), stopped after timeout_s.

    The child gets its own session, so a `strata up` it launched is in its process group and
    stops with it: SIGTERM to the group (the launcher shuts its daemons down), SIGKILL 30 s later.
    """
    started = time.monotonic()
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, start_new_session=True) as child:
        try:
            output, _ = child.communicate(timeout=max(1.0, timeout_s))
            exit_code = child.returncode
        except subprocess.TimeoutExpired:
            _signal_group(child.pid, signal.SIGTERM)
            try:
                output, _ = child.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(child.pid, signal.SIGKILL)
                output, _ = child.communicate()
            exit_code = None
    return ChildResult(exit_code, output.decode(errors="replace"), time.monotonic() - started)


def _signal_group(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, number)


def check_tests(deadline: Deadline) -> list[Row]:
    files = cuda_test_files(ROOT / "tests")
    if not files:
        return [Row("tests", "tests/ (none that need CUDA)", other="not found", is_failure=True)]
    argv = [sys.executable, "-m", "pytest", *map(str, files), "-q", "-rfEs", "-p", "no:cacheprovider"]
    child = run_child(argv, min(TESTS_TIMEOUT_S, deadline.left() - SERVE_RESERVE_S))
    if child.exit_code != 0:
        print(child.output[-6000:], flush=True)
    counts = parse_pytest_counts(child.output)
    other = ", ".join(f"{n} {word}" for word, n in counts.items()) or "no summary"
    if child.exit_code is None:
        other = f"timed out; {other}"
    names = " ".join(str(f.relative_to(ROOT)) for f in files)
    return [Row("tests", names, f"{child.seconds:.0f} s", other=other, is_failure=child.exit_code != 0)]


def check_kernels(deadline: Deadline) -> list[Row]:
    from bench import gpu_kernels

    rows = []
    for case in gpu_kernels.CASES:
        label = f"{case.name} {case.num_seqs} x {case.context_len}" + (
            f" ({case.num_queries} queries each)" if 1 < case.num_queries < case.context_len else "")
        if deadline.left() < SERVE_RESERVE_S:
            rows.append(Row("kernel", label, other="skipped: out of time"))
            continue
        try:
            timing = gpu_kernels.measure(case)
        except Exception as error:   # one shape failing (e.g. out of memory) leaves the rest to run
            rows.append(Row("kernel", label, other=f"{type(error).__name__}: {error}"[:200], is_failure=True))
            torch.cuda.empty_cache()
            continue
        other = f"probe {timing.probe_gb_per_s:.0f} GB/s"
        if case.num_queries > 1:
            other += f", {timing.tflop_per_s:.1f} TFLOP/s"
        rows.append(Row("kernel", label, f"{timing.ms:.3f} ms", f"{timing.gb_per_s:.0f}",
                        f"{timing.gb_per_s / timing.probe_gb_per_s:.2f}", other))
        print(f"  {label}: {timing.ms:.3f} ms, {timing.gb_per_s:.0f} GB/s ({other})", flush=True)
    return rows


def serve_row(document: dict) -> Row:
    """The `strata bench --json` document's figures as one row."""
    config = document["configurations"]["strata"]
    ttft, tpot = config["ttft_ms"] or {}, config["tpot_ms"] or {}
    figures = [f"{config['num_completed']}/{config['num_completed'] + config['num_failed']} completed",
               f"output {config['output_throughput_tok_s']:.0f} tok/s",
               f"total {config['total_throughput_tok_s']:.0f} tok/s",
               f"TTFT mean {ttft.get('mean', 0):.0f} / p99 {ttft.get('p99', 0):.0f} ms",
               f"TPOT mean {tpot.get('mean', 0):.1f} ms",
               f"preemptions {config.get('num_preemptions')}",
               f"startup {config.get('server_startup_s') or 0:.0f} s"]
    workload = document["workload"]
    case = f"random {workload['num_prompts']} prompts, in {workload['input_len']}, out {workload['output_len']}"
    return Row("serve", case, f"{config['duration_s']:.1f} s", other=", ".join(figures),
               is_failure=config["num_failed"] > 0)


def check_serve(deadline: Deadline, model: Path | None, work_dir: Path) -> list[Row]:
    if model is None:
        model = work_dir / "model-100m"
        child = run_child([sys.executable, "-m", "bench.make_model", str(model)],
                          min(MAKE_MODEL_TIMEOUT_S, deadline.left()))
        if child.exit_code != 0:
            print(child.output[-4000:], flush=True)
            return [Row("serve", "python -m bench.make_model", f"{child.seconds:.0f} s",
                        other=f"exit {child.exit_code}", is_failure=True)]
    out = work_dir / "serve.json"
    timeout_s = deadline.left()
    argv = [sys.executable, "-m", "strata.cli", "bench", *SERVE_ARGS, "--launch", "--model", str(model),
            "--launch-timeout", f"{max(30.0, timeout_s - 60):.0f}", "--json", str(out)]
    child = run_child(argv, timeout_s)
    if child.exit_code is None or not out.is_file():
        print(child.output[-6000:], flush=True)
        what = "timed out" if child.exit_code is None else f"exit {child.exit_code}, no JSON"
        return [Row("serve", "strata bench --workload random --launch", f"{child.seconds:.0f} s", other=what,
                    is_failure=True)]
    if child.exit_code != 0:
        print(child.output[-3000:], flush=True)
    return [serve_row(json.loads(out.read_text()))]


def card_name() -> str:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "missing"
    return (f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"triton {triton_version})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model directory to serve (default: build the 100M one)")
    parser.add_argument("--work-dir", type=Path, help="where the model and the serve JSON go (default: a temp dir)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"bench.gpu_check needs CUDA: torch.cuda.is_available() is False here (torch {torch.__version__}); "
              "nothing checked")
        return 0
    # Compiled kernels whatever the shell says: the interpreter would time numpy.
    os.environ["TRITON_INTERPRET"] = "0"
    deadline = Deadline(TOTAL_BUDGET_S)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="strata-gpu-check-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    print("1/3 CUDA tests", flush=True)
    rows = check_tests(deadline)
    print("2/3 paged attention kernels", flush=True)
    rows += check_kernels(deadline)
    print("3/3 strata bench --workload random --launch", flush=True)
    rows += check_serve(deadline, args.model, work_dir)
    print(format_table(card_name(), rows))
    return 1 if any(row.is_failure for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
