"""Triton body of write_kv: scatter this step's K/V rows into their paged slots."""
from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from kernels.checks import check_write_kv


@triton.jit
def _write_kv_kernel(
    cache_ptr, key_ptr, value_ptr, slot_ptr,
    stride_cache_block, stride_cache_kv, stride_cache_offset, stride_cache_head,
    stride_key_token, stride_key_head, stride_value_token, stride_value_head,
    block_size, head_dim,
    HEAD_DIM_PAD: tl.constexpr,
):
    token = tl.program_id(0)
    kv_head = tl.program_id(1)
    # int64 before multiplying by strides: a large pool overflows int32 offsets.
    slot = tl.load(slot_ptr + token).to(tl.int64)
    block = slot // block_size
    offset = slot % block_size
    dims = tl.arange(0, HEAD_DIM_PAD)
    is_dim = dims < head_dim
    key = tl.load(key_ptr + token * stride_key_token + kv_head * stride_key_head + dims, mask=is_dim)
    value = tl.load(value_ptr + token * stride_value_token + kv_head * stride_value_head + dims, mask=is_dim)
    dst = cache_ptr + block * stride_cache_block + offset * stride_cache_offset + kv_head * stride_cache_head + dims
    tl.store(dst, key.to(cache_ptr.dtype.element_ty), mask=is_dim)
    tl.store(dst + stride_cache_kv, value.to(cache_ptr.dtype.element_ty), mask=is_dim)


def write_kv_triton(layer_cache: Tensor, key: Tensor, value: Tensor, slot_mapping: Tensor) -> None:
    check_write_kv(layer_cache, key, value, slot_mapping)
    key = key if key.stride(2) == 1 else key.contiguous()
    value = value if value.stride(2) == 1 else value.contiguous()
    _, _, block_size, num_kv_heads, head_dim = layer_cache.shape
    num_tokens = slot_mapping.shape[0]
    if num_tokens == 0:
        return
    grid = (num_tokens, num_kv_heads)
    _write_kv_kernel[grid](
        layer_cache, key, value, slot_mapping,
        layer_cache.stride(0), layer_cache.stride(1), layer_cache.stride(2), layer_cache.stride(3),
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        block_size, head_dim,
        HEAD_DIM_PAD=triton.next_power_of_2(head_dim),
    )
