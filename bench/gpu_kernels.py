"""Paged attention on CUDA against a copy-bandwidth probe: bf16, serving shapes, CUDA events.

Part of `python -m bench.gpu_check` (CUDA only). Each case builds a bf16 layer view of a
two-layer block-major pool on the device (random K/V, blocks in random order), times
kernels.paged_attention_triton, then times `dst.copy_(src)` of a buffer as large as the K/V the
case reads. A copy reads and writes every byte, so the probe's rate is 2 x bytes / time, the
memory bandwidth torch reaches here; a kernel's rate is its K/V bytes / time, and "of probe" is
the ratio (1.0: the kernel reads K/V as fast as the card moves memory). Prefill reads each K/V
step once per query tile, so its rate counts unique bytes and its figure of merit is TFLOP/s.

The batches are made on the device rather than with bench.paged_batch.make_paged_batch, which
draws them on the CPU in fp32: tens of seconds for the 4 GiB pools here.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 32, 8, 128   # a Llama-3-8B-shaped layer
BLOCK_SIZE = 16
NUM_WARMUP, NUM_RUNS = 3, 10


class Case(NamedTuple):
    name: str
    num_seqs: int
    context_len: int
    num_queries: int     # per sequence: 1 decodes, context_len a full prefill, less a chunk after a prefix


CASES = [
    Case("decode", 64, 512, 1),
    Case("decode", 256, 1024, 1),
    Case("decode", 64, 4096, 1),
    Case("decode", 256, 4096, 1),
    Case("prefill", 64, 512, 512),
    Case("prefill", 16, 2048, 2048),
    Case("prefill chunk", 64, 4096, 512),
]


class GpuKernelTiming(NamedTuple):
    case: Case
    ms: float
    kv_bytes: int
    probe_ms: float
    num_flops: int

    @property
    def gb_per_s(self) -> float:
        return self.kv_bytes / self.ms / 1e6

    @property
    def probe_gb_per_s(self) -> float:
        return 2 * self.kv_bytes / self.probe_ms / 1e6

    @property
    def tflop_per_s(self) -> float:
        return self.num_flops / self.ms / 1e9


def time_ms(fn: Callable[[], object]) -> float:
    """Median of NUM_RUNS CUDA-event timings after NUM_WARMUP runs (the first compiles).

    Runs are queued back to back, so a case shorter than its launch overhead (the wrapper's
    checks and two launches, tens of microseconds) measures the overhead.
    """
    for _ in range(NUM_WARMUP):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(NUM_RUNS)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return sorted(start.elapsed_time(end) for start, end in events)[NUM_RUNS // 2]


def paged_inputs(case: Case, generator: torch.Generator) -> tuple:
    """(query, layer_cache, block_tables, seq_lens, query_start_loc, scale) on the device."""
    device, dtype = "cuda", torch.bfloat16
    num_blocks_per_seq = -(-case.context_len // BLOCK_SIZE)
    num_blocks = case.num_seqs * num_blocks_per_seq
    pool = torch.randn(num_blocks, 2, 2, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, device=device, dtype=dtype,
                       generator=generator)
    order = torch.randperm(num_blocks, device=device, generator=generator).to(torch.int32)
    block_tables = order.view(case.num_seqs, num_blocks_per_seq)
    seq_lens = torch.full((case.num_seqs,), case.context_len, device=device, dtype=torch.int32)
    query_start_loc = (torch.arange(case.num_seqs + 1, device=device) * case.num_queries).to(torch.int32)
    query = torch.randn(case.num_seqs * case.num_queries, NUM_HEADS, HEAD_DIM, device=device, dtype=dtype,
                        generator=generator)
    return query, pool[:, 1], block_tables, seq_lens, query_start_loc, HEAD_DIM**-0.5


def num_flops(case: Case) -> int:
    """Q K^T and P V over the visible keys: 4 x head_dim flops per (query head, visible key)."""
    first = case.context_len - case.num_queries   # query i sees first + i + 1 keys
    num_visible = case.num_queries * (first + 1) + case.num_queries * (case.num_queries - 1) // 2
    return 4 * HEAD_DIM * NUM_HEADS * case.num_seqs * num_visible


def measure(case: Case) -> GpuKernelTiming:
    from kernels import paged_attention_triton

    inputs = paged_inputs(case, torch.Generator(device="cuda").manual_seed(0))
    ms = time_ms(lambda: paged_attention_triton(*inputs))
    del inputs
    kv_bytes = case.num_seqs * case.context_len * 2 * NUM_KV_HEADS * HEAD_DIM * torch.bfloat16.itemsize
    source = torch.empty(kv_bytes, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    probe_ms = time_ms(lambda: target.copy_(source))
    del source, target
    torch.cuda.empty_cache()
    return GpuKernelTiming(case, ms, kv_bytes, probe_ms, num_flops(case))
