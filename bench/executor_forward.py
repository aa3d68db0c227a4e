"""Executor forward throughput vs transformers on the same ~124M Llama-shaped random model.

    python -m bench.executor_forward [--batches 1,2,4,...,256] [--context 256] [--threads 1]

Decode rows: B requests each with a `context`-token history already in the KV pool (random KV:
the work, not the values, is what is measured), one executor Step (plan validation, batch
build, forward, greedy sampling) vs one transformers forward over a DynamicCache of the same
length plus argmax. Prefill row: one 512-token prompt through both. Not a test.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see MACHINE.md
# Run as a script, bench/ would come first on sys.path and bench/kernels.py would shadow kernels/.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

SHAPE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
             intermediate_size=2048, vocab_size=32000, max_position_embeddings=2048)
BLOCK_SIZE = 16


def make_model(out_dir: str):
    import torch
    import transformers

    config = transformers.LlamaConfig(**SHAPE, tie_word_embeddings=False, eos_token_id=None, bos_token_id=None)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    return model


def executor_decode(runner, batch: int, context: int, num_steps: int) -> float:
    """Median seconds of one decode Step for `batch` requests at `context` tokens."""
    from bench.step_plans import make_plan, new_request, running

    runner.reset()
    num_blocks = -(-(context + num_steps + 1) // BLOCK_SIZE)
    tables = [list(range(i * num_blocks, (i + 1) * num_blocks)) for i in range(batch)]
    # The first context-1 tokens count as cached (random KV already in the pool): one decode.
    prompts = [[(i * 7 + j) % 31999 + 1 for j in range(context)] for i in range(batch)]
    runner.step(make_plan(0, [new_request(f"r{i}", prompts[i], tables[i], num_computed_tokens=context - 1)
                              for i in range(batch)]))
    times = []
    for step in range(num_steps):
        plan = make_plan(step + 1, run=[running(f"r{i}", context + step) for i in range(batch)])
        start = time.perf_counter()
        runner.step(plan)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def hf_decode(model, batch: int, context: int, num_steps: int) -> float:
    import torch
    from transformers import DynamicCache

    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    cache = DynamicCache(config=config)
    for layer in range(config.num_hidden_layers):
        shape = (batch, config.num_key_value_heads, context - 1, head_dim)
        cache.update(torch.randn(shape), torch.randn(shape), layer)
    tokens = torch.randint(1, config.vocab_size, (batch, 1))
    times = []
    with torch.inference_mode():
        for step in range(num_steps):
            positions = torch.full((batch, 1), context - 1 + step)
            start = time.perf_counter()
            logits = model(input_ids=tokens, past_key_values=cache, position_ids=positions,
                           use_cache=True, logits_to_keep=1).logits
            tokens = logits[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def executor_prefill(runner, length: int) -> float:
    from bench.step_plans import make_plan, new_request

    runner.reset()
    prompt = [(j * 13) % 31999 + 1 for j in range(length)]
    plan = make_plan(1, [new_request("p", prompt, list(range(-(-length // BLOCK_SIZE))))])
    start = time.perf_counter()
    runner.step(plan)
    return time.perf_counter() - start


def hf_prefill(model, length: int) -> float:
    import torch

    tokens = torch.tensor([[(j * 13) % 31999 + 1 for j in range(length)]])
    with torch.inference_mode():
        start = time.perf_counter()
        model(input_ids=tokens, use_cache=True, logits_to_keep=1).logits.argmax(-1)
        return time.perf_counter() - start


def overhead_at(runner, batch: int, context: int, num_steps: int) -> tuple[float, float]:
    """(step seconds, seconds outside the model forward) at `batch`: the per-step Python cost."""
    model = runner.loaded.model
    inner = model.logits
    spent = []

    def timed(*args):
        start = time.perf_counter()
        result = inner(*args)
        spent.append(time.perf_counter() - start)
        return result

    model.logits = timed
    try:
        step = executor_decode(runner, batch, context, num_steps)
    finally:
        del model.logits
    return step, step - sorted(spent[1:])[len(spent[1:]) // 2]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,2,4,8,16,32,64,128,256")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from executor.settings import RunnerSettings, build_runner

    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    num_blocks = max(batches) * -(-(args.context + args.steps + 1) // BLOCK_SIZE)
    print(f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; fp32; model {SHAPE}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        hf = make_model(tmp)
        runner = build_runner(RunnerSettings(tmp, num_device_blocks=num_blocks, block_size=BLOCK_SIZE,
                                             max_num_batched_tokens=max(4096, args.prefill)))
        runner.pool.tensor.normal_()
        print(f"{'workload':<22}{'executor tok/s':>16}{'HF tok/s':>12}{'ratio':>8}", flush=True)
        for batch in batches:
            ours = executor_decode(runner, batch, args.context, args.steps)
            theirs = hf_decode(hf, batch, args.context, args.steps)
            print(f"{f'decode B={batch} ctx={args.context}':<22}{batch / ours:>16.1f}{batch / theirs:>12.1f}"
                  f"{theirs / ours:>8.2f}", flush=True)
        ours, theirs = executor_prefill(runner, args.prefill), hf_prefill(hf, args.prefill)
        print(f"{f'prefill {args.prefill}':<22}{args.prefill / ours:>16.1f}{args.prefill / theirs:>12.1f}"
              f"{theirs / ours:>8.2f}")
        step, outside = overhead_at(runner, 64, args.context, args.steps + 2)
        print(f"decode B=64: step {step * 1e3:.1f} ms, outside the model forward {outside * 1e3:.2f} ms "
              "(validation, batch build, sampling, result)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
