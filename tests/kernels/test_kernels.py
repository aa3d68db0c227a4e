"""Torch twins of the paged kernels against naive per-position loops (fp32, CPU)."""
from __future__ import annotations

import math
import threading

import pytest
import torch

from bench.paged_batch import PagedBatch, make_paged_batch
import kernels
from kernels import paged_attention_torch, write_kv_torch
from kernels import twin
from kernels.workspace import scratch

# (context_len, num_queries): prefill from empty, chunk after a cached prefix, decodes,
# lengths on and across block boundaries, odd lengths, a sequence with no queries this step.
MIXED_SPECS = [(37, 37), (50, 13), (1, 1), (33, 1), (64, 1), (17, 9), (32, 32), (9, 0), (71, 2), (16, 1)]
HEAD_SHAPES = {"mha": (4, 4), "gqa": (6, 2), "mqa": (4, 1)}


def naive_write_kv(batch: PagedBatch) -> torch.Tensor:
    expected = batch.pool.clone()
    block_size = batch.pool.shape[3]
    for token, slot in enumerate(batch.slot_mapping.tolist()):
        expected[slot // block_size, batch.layer, 0, slot % block_size] = batch.key[token]
        expected[slot // block_size, batch.layer, 1, slot % block_size] = batch.value[token]
    return expected


def naive_attention(batch: PagedBatch) -> torch.Tensor:
    """Plain loops over sequences, queries, heads and positions; fp64 accumulation."""
    cache = batch.layer_cache.double()
    block_size = cache.shape[2]
    num_heads, num_kv_heads = batch.query.shape[1], cache.shape[3]
    out = torch.zeros(batch.query.shape, dtype=torch.float64)
    starts = batch.query_start_loc.tolist()
    for seq, context_len in enumerate(batch.seq_lens.tolist()):
        table = batch.block_tables[seq].tolist()
        num_queries = starts[seq + 1] - starts[seq]
        for i in range(num_queries):
            token, position = starts[seq] + i, context_len - num_queries + i
            for head in range(num_heads):
                kv_head = head // (num_heads // num_kv_heads)
                query = batch.query[token, head].double()
                scores, values = [], []
                for p in range(position + 1):
                    block, offset = table[p // block_size], p % block_size
                    scores.append(float(query @ cache[block, 0, offset, kv_head]) * batch.scale)
                    values.append(cache[block, 1, offset, kv_head])
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                out[token, head] = sum(w * v for w, v in zip(weights, values)) / sum(weights)
    return out.float()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    error = (actual.float() - expected.float()).abs().max().item()
    magnitude = expected.float().abs().max().item()
    assert error <= rtol * max(magnitude, 1.0), f"max abs error {error:.3g} vs magnitude {magnitude:.3g}"


@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_write_kv_twin_matches_naive_scatter_exactly(block_size):
    batch = make_paged_batch(MIXED_SPECS, block_size=block_size, num_heads=4, num_kv_heads=2, head_dim=16)
    expected = naive_write_kv(batch)
    write_kv_torch(batch.layer_cache, batch.key, batch.value, batch.slot_mapping)
    assert torch.equal(batch.pool, expected)


def test_write_kv_casts_to_cache_dtype_and_leaves_other_layers_alone():
    batch = make_paged_batch(MIXED_SPECS, block_size=16, num_heads=4, num_kv_heads=2, head_dim=16, num_layers=3)
    pool = batch.pool.to(torch.bfloat16)
    before = pool.clone()
    kernels.write_kv(pool[:, 1], batch.key, batch.value, batch.slot_mapping)
    block_size = pool.shape[3]
    blocks, offsets = batch.slot_mapping // block_size, batch.slot_mapping % block_size
    assert torch.equal(pool[blocks, 1, 0, offsets], batch.key.to(torch.bfloat16))
    assert torch.equal(pool[blocks, 1, 1, offsets], batch.value.to(torch.bfloat16))
    assert torch.equal(pool[:, [0, 2]], before[:, [0, 2]])


@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("heads", list(HEAD_SHAPES))
def test_paged_attention_twin_matches_naive_on_mixed_batch(block_size, heads):
    num_heads, num_kv_heads = HEAD_SHAPES[heads]
    batch = make_paged_batch(
        MIXED_SPECS, block_size=block_size, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=16
    )
    kernels.write_kv(batch.layer_cache, batch.key, batch.value, batch.slot_mapping)
    out = kernels.paged_attention(
        batch.query, batch.layer_cache, batch.block_tables, batch.seq_lens, batch.query_start_loc, batch.scale
    )
    assert out.shape == batch.query.shape and out.dtype == batch.query.dtype
    assert_close(out, naive_attention(batch))


def test_decodes_of_very_different_lengths_split_into_buckets_and_match_naive():
    specs = [(length, 1) for length in (3, 200, 7, 150, 64, 65, 1, 120, 31)]
    batch = make_paged_batch(specs, block_size=8, num_heads=6, num_kv_heads=2, head_dim=16, seed=3)
    write_kv_torch(batch.layer_cache, batch.key, batch.value, batch.slot_mapping)
    out = paged_attention_torch(
        batch.query, batch.layer_cache, batch.block_tables, batch.seq_lens, batch.query_start_loc, batch.scale
    )
    assert_close(out, naive_attention(batch))


def test_bf16_cache_computes_in_fp32_and_returns_query_dtype():
    batch = make_paged_batch([(40, 40), (21, 1)], block_size=16, num_heads=4, num_kv_heads=2, head_dim=16)
    write_kv_torch(batch.layer_cache, batch.key, batch.value, batch.slot_mapping)
    pool_bf16 = batch.pool.to(torch.bfloat16)
    query_bf16 = batch.query.to(torch.bfloat16)
    out = paged_attention_torch(
        query_bf16, pool_bf16[:, batch.layer], batch.block_tables, batch.seq_lens, batch.query_start_loc, batch.scale
    )
    assert out.dtype == torch.bfloat16
    batch.pool, batch.query = pool_bf16.float(), query_bf16.float()
    assert_close(out, naive_attention(batch), rtol=1e-2)


def test_shape_mismatch_is_rejected_with_a_message():
    batch = make_paged_batch([(5, 5)], block_size=8, num_heads=4, num_kv_heads=2, head_dim=16)
    with pytest.raises(AssertionError, match="multiple of num_kv_heads"):
        paged_attention_torch(
            batch.query[:, :3], batch.layer_cache, batch.block_tables, batch.seq_lens, batch.query_start_loc, 1.0
        )
    with pytest.raises(AssertionError, match="key shape"):
        write_kv_torch(batch.layer_cache, batch.key[:, :1], batch.value, batch.slot_mapping)


def test_decode_buckets_group_similar_lengths_longest_first_within_token_budget():
    context_lens = [100, 80, 76, 75, 10, 9, 100, 7]
    buckets = twin._decode_buckets(list(range(8)), context_lens, max_tokens=250)
    # A third sequence would make 3 x 100 > 250 tokens; 10 < 0.75 x 80 and 7 < 0.75 x 10 split.
    assert buckets == [[0, 6], [1, 2, 3], [4, 5], [7]]


def test_small_decode_token_budget_still_matches_naive(monkeypatch):
    monkeypatch.setattr(twin, "MAX_DECODE_TOKENS", 40)
    specs = [(length, 1) for length in (30, 29, 31, 28, 17)] + [(12, 4)]
    batch = make_paged_batch(specs, block_size=8, num_heads=4, num_kv_heads=2, head_dim=16, seed=7)
    write_kv_torch(batch.layer_cache, batch.key, batch.value, batch.slot_mapping)
    out = paged_attention_torch(
        batch.query, batch.layer_cache, batch.block_tables, batch.seq_lens, batch.query_start_loc, batch.scale
    )
    assert_close(out, naive_attention(batch))


def test_int64_metadata_and_empty_batch_are_accepted():
    batch = make_paged_batch([(20, 3), (9, 1)], block_size=8, num_heads=4, num_kv_heads=2, head_dim=16)
    write_kv_torch(batch.layer_cache, batch.key, batch.value, batch.slot_mapping)
    out = paged_attention_torch(
        batch.query, batch.layer_cache, batch.block_tables.long(), batch.seq_lens.long(),
        batch.query_start_loc.long(), batch.scale,
    )
    assert_close(out, naive_attention(batch))
    empty = paged_attention_torch(
        batch.query[:0], batch.layer_cache, batch.block_tables[:0], batch.seq_lens[:0],
        batch.query_start_loc[:1], batch.scale,
    )
    assert empty.shape == (0, 4, 16)


def test_scratch_is_reused_within_a_thread_and_private_to_each_thread():
    first = scratch(100, torch.float32, torch.device("cpu"))
    again = scratch(80, torch.float32, torch.device("cpu"))
    assert again.data_ptr() == first.data_ptr()
    grown = scratch(1000, torch.float32, torch.device("cpu"))
    assert grown.numel() == 1000
    other: list[int] = []
    worker = threading.Thread(target=lambda: other.append(scratch(10, torch.float32, torch.device("cpu")).data_ptr()))
    worker.start()
    worker.join()
    assert other[0] != grown.data_ptr()


def test_scratch_first_made_in_inference_mode_is_writable_outside_it():
    sums = []

    def first_use_in_inference_mode() -> None:   # a fresh thread: its scratch buffers are new
        with torch.inference_mode():
            scratch(4096, torch.float32, torch.device("cpu")).zero_()   # as the executor's forward does
        buffer = scratch(4096, torch.float32, torch.device("cpu"))
        buffer.fill_(1.0)                                               # as a kernel test or a bench does
        sums.append(buffer.sum().item())

    thread = threading.Thread(target=first_use_in_inference_mode)
    thread.start()
    thread.join()
    assert sums == [4096.0]


def test_twin_without_enable_gqa_matches_naive(monkeypatch):
    # GPU hosts may run torch 2.4, whose SDPA has no enable_gqa: the twin repeats KV heads.
    monkeypatch.setattr(twin, "_HAS_ENABLE_GQA", False)
    batch = make_paged_batch([(30, 30), (41, 7), (12, 1)], block_size=8, num_heads=6, num_kv_heads=2, head_dim=16)
    write_kv_torch(batch.layer_cache, batch.key, batch.value, batch.slot_mapping)
    out = paged_attention_torch(
        batch.query, batch.layer_cache, batch.block_tables, batch.seq_lens, batch.query_start_loc, batch.scale
    )
    assert_close(out, naive_attention(batch))
