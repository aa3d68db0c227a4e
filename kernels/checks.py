"""Shape/stride/dtype checks shared by the torch twins and the Triton wrappers."""
from __future__ import annotations

import torch
from torch import Tensor


def check_layer_cache(layer_cache: Tensor) -> None:
    """A layer view of the block-major pool: [num_blocks, 2, block_size, num_kv_heads, head_dim].

    Blocks may be strided apart (other layers sit in between); within a block the
    (block_size, num_kv_heads, head_dim) part must be dense, because both bodies address a
    token row as `block * stride(0) + kv * stride(1) + offset * stride(2)`.
    """
    assert layer_cache.dim() == 5, f"layer_cache must be 5-D, got {tuple(layer_cache.shape)}"
    assert layer_cache.shape[1] == 2, f"dim 1 of layer_cache must be 2 (K, V), got {layer_cache.shape[1]}"
    _, _, block_size, num_kv_heads, head_dim = layer_cache.shape
    assert layer_cache.stride(4) == 1, "layer_cache head_dim must be contiguous"
    assert layer_cache.stride(3) == head_dim, "layer_cache kv-head dim must be contiguous"
    assert layer_cache.stride(2) == num_kv_heads * head_dim, "layer_cache token dim must be contiguous"


def check_write_kv(layer_cache: Tensor, key: Tensor, value: Tensor, slot_mapping: Tensor) -> None:
    check_layer_cache(layer_cache)
    _, _, _, num_kv_heads, head_dim = layer_cache.shape
    num_tokens = slot_mapping.shape[0]
    expected = (num_tokens, num_kv_heads, head_dim)
    assert tuple(key.shape) == expected, f"key shape {tuple(key.shape)} != {expected}"
    assert tuple(value.shape) == expected, f"value shape {tuple(value.shape)} != {expected}"
    assert slot_mapping.dim() == 1, "slot_mapping must be 1-D"
    assert slot_mapping.dtype in (torch.int64, torch.int32), "slot_mapping must be int64 or int32"
    assert key.device == layer_cache.device == value.device == slot_mapping.device, "all tensors on one device"


def check_paged_attention(
    query: Tensor, layer_cache: Tensor, block_tables: Tensor, seq_lens: Tensor, query_start_loc: Tensor
) -> None:
    check_layer_cache(layer_cache)
    _, _, _, num_kv_heads, head_dim = layer_cache.shape
    assert query.dim() == 3, f"query must be [num_tokens, num_heads, head_dim], got {tuple(query.shape)}"
    assert query.shape[2] == head_dim, f"query head_dim {query.shape[2]} != cache head_dim {head_dim}"
    assert query.shape[1] % num_kv_heads == 0, (
        f"num_heads {query.shape[1]} must be a multiple of num_kv_heads {num_kv_heads}"
    )
    num_seqs = seq_lens.shape[0]
    assert block_tables.dim() == 2 and block_tables.shape[0] == num_seqs, (
        f"block_tables must be [num_seqs={num_seqs}, max_blocks], got {tuple(block_tables.shape)}"
    )
    assert tuple(query_start_loc.shape) == (num_seqs + 1,), "query_start_loc must be [num_seqs + 1]"
    for name, t in (("block_tables", block_tables), ("seq_lens", seq_lens), ("query_start_loc", query_start_loc)):
        assert t.dtype in (torch.int32, torch.int64), f"{name} must be int32 or int64, got {t.dtype}"
        assert t.device == query.device, f"{name} must be on {query.device}"
