"""Microbenchmark of the paged kernels: paged attention vs contiguous SDPA at equal lengths.

    python -m bench.kernels [--heads 12] [--kv-heads 4] [--head-dim 64] [--block-size 16]

CPU: the torch twin (the production path) vs one contiguous SDPA call over the same K/V, the
ratio being what paging costs. CUDA: also the Triton body, with its achieved K/V bandwidth.
Decode batches of 1..256 sequences at context 512, and one 512-token prefill. Then the fused
CPU layers (kernels/csrc/cpu_ops.cpp: RMSNorm, residual add + RMSNorm, SiLU-and-mul, RoPE, K/V
write) against the model's torch forms, in fp32 and bf16, at decode (64) and prefill (512) rows.
"""
from __future__ import annotations

import os

# Thread policy before torch is imported: OpenMP's default busy-wait is 5-70x slower on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Callable, NamedTuple  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.paged_batch import PagedBatch, make_paged_batch  # noqa: E402
from kernels import paged_attention_torch, write_kv_torch  # noqa: E402


class KernelTiming(NamedTuple):
    name: str
    twin_ms: float
    contiguous_ms: float
    triton_ms: float | None
    kv_bytes: int


def time_ms(fn: Callable[[], object], is_cuda: bool, budget_s: float = 0.3, max_runs: int = 20) -> float:
    """Median wall time of fn after one warm-up run."""
    fn()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < max_runs and (not samples or time.perf_counter() - started < budget_s):
        if is_cuda:
            torch.cuda.synchronize()
        begin = time.perf_counter()
        fn()
        if is_cuda:
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - begin) * 1e3)
    return sorted(samples)[len(samples) // 2]


def contiguous_sdpa(batch: PagedBatch, context_len: int, num_queries: int) -> Callable[[], object]:
    """Same shapes, K/V already dense [num_seqs, kv_heads, context_len, D]: the unpaged ideal."""
    num_seqs = batch.seq_lens.shape[0]
    num_heads, head_dim = batch.query.shape[1:]
    num_kv_heads = batch.pool.shape[4]
    like = dict(device=batch.query.device, dtype=batch.query.dtype)
    query = torch.randn(num_seqs, num_heads, num_queries, head_dim, **like)
    key = torch.randn(num_seqs, num_kv_heads, context_len, head_dim, **like)
    value = torch.randn_like(key)
    is_causal = num_queries > 1
    return lambda: F.scaled_dot_product_attention(query, key, value, is_causal=is_causal, enable_gqa=True)


def measure(name: str, specs: list[tuple[int, int]], args: argparse.Namespace, device: str) -> KernelTiming:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    batch = make_paged_batch(specs, block_size=args.block_size, num_heads=args.heads, num_kv_heads=args.kv_heads,
                             head_dim=args.head_dim, dtype=dtype, device=device)
    write_kv_torch(batch.layer_cache, batch.key, batch.value, batch.slot_mapping)
    inputs = (batch.query, batch.layer_cache, batch.block_tables, batch.seq_lens, batch.query_start_loc, batch.scale)
    is_cuda = device == "cuda"
    twin_ms = time_ms(lambda: paged_attention_torch(*inputs), is_cuda)
    contiguous_ms = time_ms(contiguous_sdpa(batch, specs[0][0], specs[0][1]), is_cuda)
    triton_ms = None
    if is_cuda:
        from kernels import paged_attention_triton

        triton_ms = time_ms(lambda: paged_attention_triton(*inputs), is_cuda)
    kv_bytes = sum(context_len for context_len, _ in specs) * 2 * args.kv_heads * args.head_dim * dtype.itemsize
    return KernelTiming(name, twin_ms, contiguous_ms, triton_ms, kv_bytes)


def report(timing: KernelTiming) -> str:
    line = (f"{timing.name:<18} twin {timing.twin_ms:8.2f} ms  contiguous {timing.contiguous_ms:8.2f} ms  "
            f"twin/contiguous {timing.twin_ms / timing.contiguous_ms:5.2f}x")
    if timing.triton_ms is not None:
        gbps = timing.kv_bytes / timing.triton_ms / 1e6
        line += (f"  triton {timing.triton_ms:7.3f} ms  triton/contiguous "
                 f"{timing.triton_ms / timing.contiguous_ms:5.2f}x  K/V read {gbps:7.1f} GB/s")
    return line


def fused_layer_cases(rows: int, dtype: torch.dtype) -> dict[str, tuple[Callable, Callable]]:
    """name -> (native, torch form) on the 100M Llama's widths (hidden 768, 12/4 heads of 64)."""
    from executor.models.transformer import apply_rope, rms_norm
    from kernels import native_ops

    ops, make = native_ops(), lambda *shape: torch.randn(*shape).to(dtype)
    x, delta, weight, gate_up = make(rows, 768), make(rows, 768), make(768), make(rows, 4096)
    qkv, cos, sin = make(rows, 1280), make(rows, 64), make(rows, 64)
    pool, slots = make(1024, 2, 16, 4, 64), torch.randperm(1024 * 16)[:rows]
    k, v = make(rows, 4, 64), make(rows, 4, 64)

    def rope_torch():
        q = qkv[:, :1024].view(rows, 16, 64)
        return apply_rope(q, cos[:, None], sin[:, None])

    def silu_torch():
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    return {"rms_norm": (lambda: ops.rms_norm(x, weight, 1e-6), lambda: rms_norm(x, weight, 1e-6)),
            "add_rms_norm": (lambda: ops.add_rms_norm(x.clone(), delta, weight, 1e-6),
                             lambda: rms_norm(x + delta, weight, 1e-6)),
            "silu_and_mul": (lambda: ops.silu_and_mul(gate_up), silu_torch),
            "rope": (lambda: ops.rope_inplace(qkv, cos, sin, 16, 64), rope_torch),
            "write_kv": (lambda: ops.write_kv(pool, k, v, slots), lambda: write_kv_torch(pool, k, v, slots))}


def report_fused_layers() -> None:
    from kernels import native_ops

    if native_ops() is None:
        print("fused layers: no native kernels on this host (no C++ compiler)")
        return
    for dtype in (torch.float32, torch.bfloat16):
        for rows in (64, 512):
            for name, (native, torch_form) in fused_layer_cases(rows, dtype).items():
                native_ms, torch_ms = time_ms(native, False), time_ms(torch_form, False)
                print(f"{name:<13} {str(dtype).removeprefix('torch.'):<9} rows {rows:<4} native {native_ms:7.3f} ms  "
                      f"torch {torch_ms:7.3f} ms  torch/native {torch_ms / native_ms:6.1f}x", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} "
          f"heads={args.heads}/{args.kv_heads} head_dim={args.head_dim} block_size={args.block_size}")
    for num_seqs in args.batches:
        print(report(measure(f"decode x{num_seqs}", [(args.context, 1)] * num_seqs, args, device)), flush=True)
    print(report(measure(f"prefill {args.context}", [(args.context, args.context)], args, device)), flush=True)
    if device == "cpu":
        report_fused_layers()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
