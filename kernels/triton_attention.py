"""Triton paged_attention: varlen, paged, causal, GQA, online softmax in fp32.

Two kernels over the same batch, each skipping the other's sequences (no device-to-host sync
decides who runs what):
- decode tokens (q_len 1), here: one program per (token, KV head). It loads the query rows of
  the GROUP query heads that share the KV head, walks the sequence's block table and keeps a
  running max / sum / accumulator, so each K/V block is read once per (token, KV head)
  rather than once per query head.

      grid = (num_tokens, num_kv_heads)
      token t of sequence s sits at position p = seq_len[s] - 1; blocks 0 .. p // BLOCK_SIZE

- prefill chunks (q_len >= 2): query tiles with tensor-core dots, triton_prefill.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.checks import check_paged_attention
from kernels.triton_prefill import launch_prefill


@triton.jit
def _decode_kernel(
    out_ptr, query_ptr, cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_loc_ptr, token_seq_ptr,
    scale,
    stride_query_token, stride_query_head, stride_out_token, stride_out_head,
    stride_cache_block, stride_cache_kv, stride_cache_offset, stride_cache_head,
    stride_block_tables_seq, head_dim,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
):
    token = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.load(token_seq_ptr + token)
    query_start = tl.load(query_start_loc_ptr + seq)
    if tl.load(query_start_loc_ptr + seq + 1) - query_start != 1:
        return   # a prefill token: the tiled kernel's
    position = tl.load(seq_lens_ptr + seq) - 1

    groups = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, HEAD_DIM_PAD)
    is_dim = dims[None, :] < head_dim
    heads = kv_head * GROUP + groups
    query_mask = (groups[:, None] < GROUP) & is_dim
    query_rows = query_ptr + token * stride_query_token + heads[:, None] * stride_query_head + dims[None, :]
    # The scale is folded into the query once instead of into every score tile.
    query = tl.load(query_rows, mask=query_mask, other=0.0).to(tl.float32) * scale

    running_max = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM_PAD], dtype=tl.float32)
    offsets = tl.arange(0, BLOCK_SIZE)
    row_offsets = offsets[:, None] * stride_cache_offset + dims[None, :]
    block_table = block_tables_ptr + seq.to(tl.int64) * stride_block_tables_seq
    for block_index in range(0, position // BLOCK_SIZE + 1):
        block = tl.load(block_table + block_index).to(tl.int64)
        base = cache_ptr + block * stride_cache_block + kv_head * stride_cache_head
        key = tl.load(base + row_offsets, mask=is_dim, other=0.0).to(tl.float32)
        value = tl.load(base + stride_cache_kv + row_offsets, mask=is_dim, other=0.0).to(tl.float32)
        scores = tl.sum(query[:, None, :] * key[None, :, :], axis=2)
        is_visible = (block_index * BLOCK_SIZE + offsets) <= position
        scores = tl.where(is_visible[None, :], scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        correction = tl.exp(running_max - new_max)
        probs = tl.exp(scores - new_max[:, None])
        running_sum = running_sum * correction + tl.sum(probs, axis=1)
        acc = acc * correction[:, None] + tl.sum(probs[:, :, None] * value[None, :, :], axis=1)
        running_max = new_max

    out = acc / running_sum[:, None]
    out_rows = out_ptr + token * stride_out_token + heads[:, None] * stride_out_head + dims[None, :]
    tl.store(out_rows, out.to(out_ptr.dtype.element_ty), mask=query_mask)


def paged_attention_triton(
    query: Tensor, layer_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
    query_start_loc: Tensor, scale: float,
) -> Tensor:
    """kernels.paged_attention's contract, on CUDA (or CPU tensors under TRITON_INTERPRET=1)."""
    check_paged_attention(query, layer_cache, block_tables, seq_lens, query_start_loc)
    assert block_tables.stride(1) == 1, "block_tables rows must be contiguous"
    assert seq_lens.stride(0) == 1 and query_start_loc.stride(0) == 1, "seq_lens, query_start_loc must be contiguous"
    query = query if query.stride(2) == 1 else query.contiguous()
    block_size = layer_cache.shape[2]
    assert block_size & (block_size - 1) == 0, f"block_size must be a power of two, got {block_size}"
    out = torch.empty_like(query)
    if query.shape[0] == 0:
        return out
    launch_decode(out, query, layer_cache, block_tables, seq_lens, query_start_loc, scale)
    launch_prefill(out, query, layer_cache, block_tables, seq_lens, query_start_loc, scale)
    return out


def launch_decode(
    out: Tensor, query: Tensor, layer_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
    query_start_loc: Tensor, scale: float,
) -> None:
    """Write out's rows of every sequence with q_len 1; the caller checked the inputs."""
    num_tokens, num_heads, head_dim = query.shape
    _, _, block_size, num_kv_heads, _ = layer_cache.shape
    group = num_heads // num_kv_heads
    num_seqs = seq_lens.shape[0]
    # output_size keeps repeat_interleave free of a device-to-host sync.
    token_seq = torch.repeat_interleave(
        torch.arange(num_seqs, device=query.device, dtype=torch.int32),
        (query_start_loc[1:] - query_start_loc[:-1]).long(), output_size=num_tokens,
    )
    grid = (num_tokens, num_kv_heads)
    _decode_kernel[grid](
        out, query, layer_cache, block_tables, seq_lens, query_start_loc, token_seq,
        scale,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        layer_cache.stride(0), layer_cache.stride(1), layer_cache.stride(2), layer_cache.stride(3),
        block_tables.stride(0), head_dim,
        GROUP=group, GROUP_PAD=triton.next_power_of_2(group), BLOCK_SIZE=block_size,
        HEAD_DIM_PAD=triton.next_power_of_2(head_dim),
    )
