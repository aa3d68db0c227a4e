"""Triton body of paged_attention for prefill chunks (q_len >= 2): query tiles, FlashAttention-style.

One program per (query tile, KV head). A tile is BLOCK_M consecutive queries of one sequence
times the GROUP query heads that share the KV head, flattened into BLOCK_M * GROUP_PAD rows
(row r = query r // GROUP_PAD, head r % GROUP_PAD), so each K/V tile read from the pages
serves the whole tile through two tensor-core dots (Q K^T, then P V). The program walks the
sequence's KV positions in tiles of BLOCK_N, looking up each position's block in the block
table (a KV tile may span pages, or sit inside one), and keeps a running max, a running sum
and an fp32 accumulator per row (online softmax).

    queries of one sequence:   0 ........................ q_len
    tiles (BLOCK_M queries):   [ tile 0 ][ tile 1 ][ tile 2 ]      (last tile partly empty)
    query i sits at position   context_len - q_len + i             (bottom-right causal)
    tile k reads KV positions  0 .. context_len - q_len + min((k + 1) * BLOCK_M, q_len) - 1

Tiles are numbered without a device-to-host sync: sequence s owns tiles
qsl[s] // BLOCK_M + s .. qsl[s + 1] // BLOCK_M + s (at least ceil(q_len / BLOCK_M) of them),
so grid = (num_tokens // BLOCK_M + num_seqs, num_kv_heads); a program finds its sequence by
binary search over query_start_loc, and the programs of decode, empty or short sequences
return at once. Decode tokens (q_len 1) belong to triton_attention.py's kernel.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import triton
import triton.language as tl
from torch import Tensor

# exp2 is one instruction where exp is two: scores are kept in log2 units.
LOG2_E = 1.4426950408889634


class PrefillTile(NamedTuple):
    block_m: int      # queries per tile (rows = block_m * the padded GQA group)
    block_n: int      # KV positions per inner-loop step
    num_warps: int


def prefill_tile(group: int, head_dim: int) -> PrefillTile:
    """The tile for a GQA group of `group` query heads per KV head.

    Not timed on a GPU yet (bench/gpu_check.py does); chosen from ptxas -v of sm_80 and
    sm_90 builds (bf16, triton 3.8): 128 rows x 32 KV positions uses 192-248 registers and
    spills nothing at head_dim 64 (4 warps) and 128 (8 warps); 64 KV positions spill at both,
    as does anything at head_dim 256 but 64 rows with 8 warps (48 bytes).
    """
    head_dim_pad = max(16, triton.next_power_of_2(head_dim))
    num_rows = 128 if head_dim_pad <= 128 else 64
    num_warps = 8 if head_dim_pad >= 128 else 4
    return PrefillTile(max(16, num_rows // triton.next_power_of_2(group)), 32, num_warps)


@triton.jit
def _find_seq(query_start_loc_ptr, tile, num_seqs, BLOCK_M: tl.constexpr):
    """The sequence s whose tiles (from qsl[s] // BLOCK_M + s) hold `tile`."""
    low = 0
    high = num_seqs
    while low < high:
        middle = (low + high) // 2
        first_tile = tl.load(query_start_loc_ptr + middle) // BLOCK_M + middle
        if first_tile <= tile:
            low = middle + 1
        else:
            high = middle
    return low - 1


@triton.jit
def _prefill_kernel(
    out_ptr, query_ptr, cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_loc_ptr,
    scale_log2, num_seqs,
    stride_query_token, stride_query_head, stride_out_token, stride_out_head,
    stride_cache_block, stride_cache_kv, stride_cache_offset, stride_cache_head,
    stride_block_tables_seq, head_dim,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, WIDEN_DOTS: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = _find_seq(query_start_loc_ptr, tile, num_seqs, BLOCK_M)
    query_start = tl.load(query_start_loc_ptr + seq)
    num_queries = tl.load(query_start_loc_ptr + seq + 1) - query_start
    tile_start = (tile - (query_start // BLOCK_M + seq)) * BLOCK_M
    if num_queries < 2 or tile_start >= num_queries:
        return
    context_len = tl.load(seq_lens_ptr + seq)
    first_position = context_len - num_queries

    rows = tl.arange(0, BLOCK_M * GROUP_PAD)
    query_index = tile_start + rows // GROUP_PAD
    heads = kv_head * GROUP + rows % GROUP_PAD
    is_row = (query_index < num_queries) & (rows % GROUP_PAD < GROUP)
    positions = first_position + query_index
    dims = tl.arange(0, HEAD_DIM_PAD)
    is_dim = dims < head_dim
    tokens = query_start + query_index
    query_offsets = tokens[:, None] * stride_query_token + heads[:, None] * stride_query_head + dims[None, :]
    query_mask = is_row[:, None] & is_dim[None, :]
    # A 16-bit cache puts the query in its dtype (tensor cores; K holds no more precision than
    # that), an fp32 cache keeps fp32 dots. The interpreter multiplies bf16 operands as their
    # raw uint16 bits (triton 3.8's create_dot), so there every dot runs in fp32.
    dot_dtype = tl.float32 if WIDEN_DOTS else cache_ptr.dtype.element_ty
    query = tl.load(query_ptr + query_offsets, mask=query_mask, other=0.0).to(dot_dtype)

    running_max = tl.full([BLOCK_M * GROUP_PAD], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([BLOCK_M * GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M * GROUP_PAD, HEAD_DIM_PAD], dtype=tl.float32)
    last_position = first_position + tl.minimum(tile_start + BLOCK_M, num_queries) - 1
    block_table = block_tables_ptr + seq.to(tl.int64) * stride_block_tables_seq
    head_base = cache_ptr + kv_head * stride_cache_head
    for kv_start in range(0, last_position + 1, BLOCK_N):
        kv_positions = kv_start + tl.arange(0, BLOCK_N)
        is_kv = kv_positions <= last_position
        # Lanes past the tile's last position get block 0 and load nothing from it.
        blocks = tl.load(block_table + kv_positions // BLOCK_SIZE, mask=is_kv, other=0).to(tl.int64)
        kv_offsets = blocks * stride_cache_block + (kv_positions % BLOCK_SIZE) * stride_cache_offset
        kv_mask = is_kv[:, None] & is_dim[None, :]
        kv_mask_t = is_dim[:, None] & is_kv[None, :]
        # K is loaded transposed, [HEAD_DIM_PAD, BLOCK_N], as the first dot's right operand.
        key_t = tl.load(head_base + kv_offsets[None, :] + dims[:, None], mask=kv_mask_t, other=0.0).to(dot_dtype)
        value = tl.load(head_base + stride_cache_kv + kv_offsets[:, None] + dims[None, :], mask=kv_mask,
                        other=0.0).to(dot_dtype)
        # IEEE: an fp32 cache must match the fp32 twin, which TF32 (10-bit mantissa) would not.
        scores = tl.dot(query, key_t, input_precision="ieee") * scale_log2
        # Every row sees position 0 in the first tile, so running_max is finite from then on
        # and a later tile wholly in a row's future adds exp2(-inf) = 0, never a NaN.
        is_visible = kv_positions[None, :] <= positions[:, None]
        scores = tl.where(is_visible, scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        correction = tl.exp2(running_max - new_max)
        probs = tl.exp2(scores - new_max[:, None])
        running_sum = running_sum * correction + tl.sum(probs, axis=1)
        acc = acc * correction[:, None] + tl.dot(probs.to(dot_dtype), value, input_precision="ieee")
        running_max = new_max

    out = acc / running_sum[:, None]
    out_offsets = tokens[:, None] * stride_out_token + heads[:, None] * stride_out_head + dims[None, :]
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=query_mask)


def launch_prefill(
    out: Tensor, query: Tensor, layer_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
    query_start_loc: Tensor, scale: float,
) -> None:
    """Write out's rows of every sequence with q_len >= 2; the caller checked the inputs."""
    num_tokens, num_heads, head_dim = query.shape
    _, _, block_size, num_kv_heads, _ = layer_cache.shape
    group = num_heads // num_kv_heads
    tile = prefill_tile(group, head_dim)
    num_seqs = seq_lens.shape[0]
    grid = (num_tokens // tile.block_m + num_seqs, num_kv_heads)
    _prefill_kernel[grid](
        out, query, layer_cache, block_tables, seq_lens, query_start_loc,
        scale * LOG2_E, num_seqs,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        layer_cache.stride(0), layer_cache.stride(1), layer_cache.stride(2), layer_cache.stride(3),
        block_tables.stride(0), head_dim,
        GROUP=group, GROUP_PAD=triton.next_power_of_2(group), BLOCK_M=tile.block_m, BLOCK_N=tile.block_n,
        BLOCK_SIZE=block_size,
        # tl.dot wants every dimension >= 16.
        HEAD_DIM_PAD=max(16, triton.next_power_of_2(head_dim)),
        WIDEN_DOTS=os.environ.get("TRITON_INTERPRET") == "1",
        num_warps=tile.num_warps,
    )
