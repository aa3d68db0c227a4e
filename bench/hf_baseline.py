"""The transformers static-batching baseline, on the same model directory and the same prompts.

Prompts are taken in arrival order, `batch_size` at a time, left-padded, and decoded greedily
with `model.generate` in fp32 until the longest max_tokens of the batch; EOS is disabled so
every row runs to that length. Each request counts as exactly its own max_tokens output tokens
(ignore_eos semantics, like the server run); the tokens a shorter request's row generates past
its max_tokens are the price of static batching and count as nothing.

Only throughput is reported: `generate` returns when the whole batch is done, so a request's
TTFT / TPOT are not observable from outside it.
"""
from __future__ import annotations

import os
import time
from typing import Callable

from bench.metrics import offline_metrics


def _import_torch():
    # OpenMP's busy-wait default is 5-70x slower on a small shared machine; the policy must be
    # set before torch loads OpenMP (see the project's MACHINE notes).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    return torch


def _batches(requests: list[tuple[list[int], int]], batch_size: int):
    for start in range(0, len(requests), batch_size):
        yield requests[start:start + batch_size]


def _left_pad(torch, prompts: list[list[int]], pad_id: int):
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt):] = 1
    return input_ids, attention_mask


def load_model(model_dir: str):
    torch = _import_torch()
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = model.generation_config
    config.eos_token_id = None  # ignore_eos: every row generates exactly max_new_tokens
    config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
    config.do_sample = False
    return model


def generate_batch(model, batch: list[tuple[list[int], int]]) -> int:
    """Generate one static batch; returns the number of new tokens per row."""
    torch = _import_torch()
    max_new = max(max_tokens for _, max_tokens in batch)
    input_ids, attention_mask = _left_pad(torch, [p for p, _ in batch], model.generation_config.pad_token_id)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False)
    return output.shape[1] - input_ids.shape[1]


def run_hf_baseline(model_dir: str, requests: list[tuple[list[int], int]], batch_size: int,
                    num_threads: int, on_batch_done: Callable[[int], None] = lambda n: None) -> dict:
    """Throughput of transformers static batching over `requests` (prompt ids, max_tokens).

    Sets torch's intra-op threads to num_threads (recorded in the result). Raises if a batch
    stops before its longest max_tokens (the comparison would be unfair)."""
    torch = _import_torch()
    torch.set_num_threads(num_threads)
    model = load_model(model_dir)
    num_input = sum(len(p) for p, _ in requests)
    num_output = sum(m for _, m in requests)
    started = time.perf_counter()
    for batch in _batches(requests, batch_size):
        num_new = generate_batch(model, batch)
        if num_new != max(m for _, m in batch):
            raise RuntimeError(f"HF generate stopped after {num_new} tokens, expected "
                               f"{max(m for _, m in batch)}: EOS was not disabled")
        on_batch_done(len(batch))
    duration_s = time.perf_counter() - started
    return {**offline_metrics(len(requests), num_input, num_output, duration_s),
            "batch_size": batch_size, "torch_num_threads": torch.get_num_threads(), "dtype": "float32"}
