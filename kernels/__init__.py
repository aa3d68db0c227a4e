"""Strata kernels: paged KV write and paged attention, a Triton body for CUDA and a torch twin.

CUDA tensors go to the Triton bodies, everything else to the torch twins (the CPU production
path), whose decode attention uses the compiled C++ kernel of cpu_native.py when it
builds; `native_ops()` is that compiled module (also the fused CPU layers the model uses), or
None. Both implementations are exported so tests can compare them; under TRITON_INTERPRET=1
the Triton bodies also accept CPU tensors.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kernels.cpu_native import native_decode, native_ops, native_prefill
from kernels.twin import paged_attention_torch, write_kv_torch

# Cache dtypes the compiled decode kernel reads (it widens 16-bit rows to fp32 as it goes).
NATIVE_CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

__all__ = [
    "write_kv", "paged_attention", "write_kv_torch", "paged_attention_torch",
    "write_kv_triton", "paged_attention_triton", "native_ops",
]


def write_kv(layer_cache: Tensor, key: Tensor, value: Tensor, slot_mapping: Tensor) -> None:
    """Scatter new K/V into the paged layer cache in place.

    layer_cache: [num_blocks, 2, block_size, num_kv_heads, head_dim], a strided view of the
    block-major pool (blocks may be strided apart; each block's last three dims dense).
    key, value: [num_tokens, num_kv_heads, head_dim], cast to the cache dtype.
    slot_mapping: int64 [num_tokens], slot = block_id * block_size + offset_in_block; slots
    must be distinct (duplicate slots leave an unspecified one of the writers).
    """
    if layer_cache.is_cuda:
        write_kv_triton(layer_cache, key, value, slot_mapping)
        return
    ops = native_ops() if key.dtype == layer_cache.dtype == value.dtype else None
    if ops is None:
        write_kv_torch(layer_cache, key, value, slot_mapping)
    else:
        ops.write_kv(layer_cache, key, value, slot_mapping)


def paged_attention(
    query: Tensor, layer_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
    query_start_loc: Tensor, scale: float,
) -> Tensor:
    """Causal attention for a varlen batch mixing prefill chunks and decode tokens.

    query: [num_tokens, num_heads, head_dim]; num_heads a multiple of num_kv_heads (GQA/MQA,
    query head h reads KV head h // (num_heads // num_kv_heads)).
    block_tables: int32 [num_seqs, max_blocks_per_seq]; entries past a sequence's
    ceil(seq_len / block_size) blocks are ignored (may hold anything).
    seq_lens: int32 [num_seqs], context length INCLUDING this step's tokens.
    query_start_loc: int32 [num_seqs + 1]; sequence i's queries query[qsl[i]:qsl[i+1]] are the
    last q_len_i positions of its context and attend causally to positions 0..p.
    Precondition: this step's K/V are already written (write_kv first). A sequence with zero
    queries is allowed and produces nothing.
    Returns [num_tokens, num_heads, head_dim] in query's dtype; softmax runs in fp32.
    """
    if query.is_cuda:
        return paged_attention_triton(query, layer_cache, block_tables, seq_lens, query_start_loc, scale)
    is_native = layer_cache.dtype in NATIVE_CACHE_DTYPES
    return paged_attention_torch(query, layer_cache, block_tables, seq_lens, query_start_loc, scale,
                                 native_decode() if is_native else None,
                                 native_prefill() if is_native else None)


def write_kv_triton(layer_cache: Tensor, key: Tensor, value: Tensor, slot_mapping: Tensor) -> None:
    from kernels.triton_write_kv import write_kv_triton as body  # triton is optional on CPU hosts

    body(layer_cache, key, value, slot_mapping)


def paged_attention_triton(
    query: Tensor, layer_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
    query_start_loc: Tensor, scale: float,
) -> Tensor:
    from kernels.triton_attention import paged_attention_triton as body  # triton is optional on CPU hosts

    return body(query, layer_cache, block_tables, seq_lens, query_start_loc, scale)
