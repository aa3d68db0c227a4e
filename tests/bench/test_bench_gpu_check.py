"""bench.gpu_check: the no-GPU answer (run here for real) and its pure helpers."""
import os
import subprocess
import sys
from pathlib import Path

from bench import gpu_check, gpu_kernels

ROOT = Path(__file__).resolve().parents[2]


def test_without_cuda_it_says_so_and_exits_0():
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this checks the no-GPU path on every host.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "bench.gpu_check needs CUDA" in done.stdout and "nothing checked" in done.stdout


def test_table_names_the_card_and_aligns_every_column():
    rows = [gpu_check.Row("tests", "tests/test_kernels_triton.py", "41 s", other="14 passed, 33 skipped"),
            gpu_check.Row("kernel", "decode 64 x 512", "0.051 ms", "2631", "0.71", "probe 3705 GB/s")]
    lines = gpu_check.format_table("NVIDIA H200 (torch 2.6.0)", rows).splitlines()
    assert lines[0] == "strata gpu_check on NVIDIA H200 (torch 2.6.0)"
    assert lines[1].split() == ["section", "case", "time", "GB/s", "of", "probe", "other"]
    assert set(lines[2]) == {"-", " "}
    assert lines[4].split() == ["kernel", "decode", "64", "x", "512", "0.051", "ms", "2631", "0.71",
                                "probe", "3705", "GB/s"]
    # every column starts at the same offset on every line
    for column in ("case", "time", "GB/s", "of probe", "other"):
        start = lines[1].index(column)
        assert lines[2][start - 2:start] == "  " and lines[2][start] == "-"
    assert lines[4].index("0.051") == lines[1].index("time") and lines[4].index("2631") == lines[1].index("GB/s")
    assert lines[3].index("14 passed") == lines[1].index("other")


def test_pytest_counts_come_from_the_last_summary_line():
    output = ("....s\n3 passed in 1s (an earlier run)\nFAILED x\n"
              "1 failed, 12 passed, 33 skipped, 2 errors, 1 warning in 41.20s\n")
    assert gpu_check.parse_pytest_counts(output) == {"failed": 1, "passed": 12, "skipped": 33, "error": 2}
    assert gpu_check.parse_pytest_counts("=== 14 passed in 3.10s ===") == {"passed": 14}
    assert gpu_check.parse_pytest_counts("Traceback ... ImportError") == {}


def test_cuda_test_files_are_those_that_skip_without_cuda(tmp_path):
    (tmp_path / "test_gpu.py").write_text("needs = pytest.mark." + gpu_check.CUDA_SKIP + ", reason='')\n")
    (tmp_path / "test_cpu.py").write_text("def test_x():\n    pass\n")
    (tmp_path / "helpers.py").write_text(gpu_check.CUDA_SKIP)
    assert gpu_check.cuda_test_files(tmp_path) == [tmp_path / "test_gpu.py"]
    assert ROOT / "tests" / "kernels" / "test_kernels_triton.py" in gpu_check.cuda_test_files(ROOT / "tests")


def test_serve_row_carries_every_figure_of_the_bench_json():
    config = {"num_completed": 127, "num_failed": 1, "duration_s": 21.34, "output_throughput_tok_s": 3120.4,
              "total_throughput_tok_s": 12000.0, "ttft_ms": {"mean": 230.2, "p99": 900.0},
              "tpot_ms": {"mean": 9.81}, "num_preemptions": 0, "server_startup_s": 35.2}
    document = {"configurations": {"strata": config},
                "workload": {"num_prompts": 128, "input_len": "64:512", "output_len": "32:128"}}
    row = gpu_check.serve_row(document)
    assert (row.section, row.case, row.time) == ("serve", "random 128 prompts, in 64:512, out 32:128", "21.3 s")
    assert row.other == ("127/128 completed, output 3120 tok/s, total 12000 tok/s, TTFT mean 230 / p99 900 ms, "
                         "TPOT mean 9.8 ms, preemptions 0, startup 35 s")
    assert row.is_failure


def test_flops_count_the_keys_each_query_sees():
    head = 4 * gpu_kernels.HEAD_DIM * gpu_kernels.NUM_HEADS
    assert gpu_kernels.num_flops(gpu_kernels.Case("decode", 3, 100, 1)) == head * 3 * 100
    assert gpu_kernels.num_flops(gpu_kernels.Case("prefill", 2, 4, 4)) == head * 2 * (1 + 2 + 3 + 4)
    assert gpu_kernels.num_flops(gpu_kernels.Case("chunk", 1, 10, 3)) == head * (8 + 9 + 10)
