"""Reproduce the README's benchmark table end to end: `python -m bench.readme_table [--out DIR]`.

1. Build the ~100M random Llama (bench.make_model) under OUT/model unless it is there.
2. `strata bench --workload random`: Strata vs transformers static batches of 16, same prompts.
3. `strata bench --workload multiturn --compare`: recompute only / RAM tier / RAM + NVMe tier,
   with the KV working set well above the device pool.
4. Write OUT/table.md (the README's table, with the machine and the date), plus each run's JSON
   and PNG, and print the table.

`--quick` shrinks both workloads (a smoke run of the whole pipeline, figures not comparable).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from bench import make_model, serve

# Smaller than the issue-scale runs (128 prompts; 32 sessions), so the whole command stays
# under 20 minutes on a 2-core machine: the transformers baseline alone is ~3 minutes of it.
RANDOM = ["--workload", "random", "--num-prompts", "48", "--input-len", "64:512",
          "--output-len", "16:256", "--num-device-blocks", "6144", "--baseline", "hf",
          "--hf-batch-size", "16"]
# 20 sessions x 6 turns over a 1,000-token system prompt: ~1,300 blocks of KV working set
# against a 160-block device pool (8.1x; the longest context, ~2,360 tokens, needs 148).
MULTITURN = ["--workload", "multiturn", "--sessions", "20", "--turns", "6", "--system-len", "1000",
             "--user-len", "64:200", "--output-len", "32", "--num-device-blocks", "160",
             # 4 turns in flight (from 4 sessions): TTFT is the server's time to first token,
             # not time spent queued behind a pool that holds 2-4 of these contexts at once.
             "--max-concurrency", "4",
             "--compare", "recompute=--no-kvstore", "ram=--kvstore-ram 2GiB --kvstore-disk 0",
             "ram+nvme=--kvstore-ram 256MiB --kvstore-disk 4GiB"]
QUICK = {"--num-prompts": "16", "--sessions": "4", "--turns": "2", "--output-len": "8"}


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


def ms(config: dict, key: str, stat: str) -> str:
    return f"{config[key][stat]:.0f}"


def table(random_run: dict, multiturn: dict, seconds: float) -> str:
    machine = random_run["machine"]
    gpus = ", ".join(machine["gpus"]) or "no GPU"
    strata = random_run["configurations"]["strata"] if "strata" in random_run["configurations"] \
        else next(iter(random_run["configurations"].values()))
    hf = next(iter(random_run["baselines"].values()))
    day = datetime.date.today().isoformat()
    lines = [f"Machine: {machine['cpu_model']}, {machine['num_cpus']} cores, {gpus}; fp32, 1 torch "
             f"thread per side; {day}; `python -m bench.readme_table` took {seconds / 60:.1f} min.",
             "",
             "| random: 48 prompts, 64-512 in, 16-256 out | output tok/s | ratio |",
             "|---|---|---|",
             f"| Strata (continuous batching) | {strata['output_throughput_tok_s']:.1f} | "
             f"{strata['output_throughput_tok_s'] / hf['output_throughput_tok_s']:.2f}x |",
             f"| transformers `generate`, static batches of 16 | {hf['output_throughput_tok_s']:.1f} | 1.00x |",
             "",
             "| multiturn: 20 sessions x 6 turns, 1,000-token system prompt, pool 1/8 of the KV, "
             "4 in flight "
             "| TTFT p50 ms | TTFT p99 ms "
             "| TTFT p50 vs recompute | output tok/s | cached tokens |",
             "|---|---|---|---|---|---|"]
    configs = multiturn["configurations"]
    base = configs["recompute"]["ttft_ms"]["p50"]
    for name, config in configs.items():
        lines.append(f"| {name} | {ms(config, 'ttft_ms', 'p50')} | {ms(config, 'ttft_ms', 'p99')} | "
                     f"{base / config['ttft_ms']['p50']:.2f}x | {config['output_throughput_tok_s']:.1f} | "
                     f"{config['cached_token_fraction']:.2f} |")
    return "\n".join(lines)


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
    random_argv, multiturn_argv = (shrink(RANDOM), shrink(MULTITURN)) if args.quick else (RANDOM, MULTITURN)
    random_run = run_bench("random", random_argv, model, out)
    multiturn = run_bench("multiturn", multiturn_argv, model, out)
    text = table(random_run, multiturn, time.monotonic() - started)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
