"""Triton bodies against the torch twins: TRITON_INTERPRET=1 on the CPU, bf16 on a GPU when lent."""
from __future__ import annotations

import os

import pytest
import torch

from bench.paged_batch import PagedBatch, make_paged_batch, to_device
from kernels import paged_attention_torch, paged_attention_triton, write_kv_torch, write_kv_triton
from kernels.triton_prefill import prefill_tile

# Tiny on purpose: the interpreter runs each program in numpy, 1,600-5,000x slower than torch.
# (context_len, num_queries): prefill, chunk after a prefix, decodes, odd and boundary lengths.
SMALL_SPECS = [(11, 11), (19, 5), (1, 1), (33, 1), (8, 1), (0, 0)]
HEAD_SHAPES = {"gqa": (4, 2), "mqa": (3, 1)}
needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="CPU runs of Triton need TRITON_INTERPRET=1 (conftest sets it)"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this host")


def run_attention(batch: PagedBatch, attention) -> torch.Tensor:
    return attention(
        batch.query, batch.layer_cache, batch.block_tables, batch.seq_lens, batch.query_start_loc, batch.scale
    )


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    error = (actual.float() - expected.float()).abs().max().item()
    return error / max(expected.float().abs().max().item(), 1.0)


def prefill_specs(block_m: int) -> list[tuple[int, int]]:
    """(context_len, num_queries) around one tile of block_m queries: a prefill of two tiles and
    a bit, a chunk of one tile and a bit after a cached prefix, two queries, a prefill shorter
    than a tile, decodes, and sequences with no queries (first, and with a cached context)."""
    return [(0, 0), (2 * block_m + 5, 2 * block_m + 5), (1, 1), (block_m + 40, block_m + 3), (9, 0),
            (33, 1), (block_m + 2, 2), (7, 7)]


def written_by_twin(batch: PagedBatch) -> PagedBatch:
    """The batch with this step's K/V written by the twin (the interpreter's bf16 rounding
    differs from CUDA's, so a bf16 cache is not written by write_kv_triton here)."""
    write_kv_torch(batch.layer_cache, batch.key, batch.value, batch.slot_mapping)
    return batch


def written_batches(batch: PagedBatch) -> tuple[PagedBatch, PagedBatch]:
    """Two copies of the batch, one written by each write_kv; asserts they are byte-identical."""
    by_twin = to_device(batch, batch.pool.dtype, str(batch.pool.device))
    by_triton = to_device(batch, batch.pool.dtype, str(batch.pool.device))
    write_kv_torch(by_twin.layer_cache, by_twin.key, by_twin.value, by_twin.slot_mapping)
    write_kv_triton(by_triton.layer_cache, by_triton.key, by_triton.value, by_triton.slot_mapping)
    assert torch.equal(by_twin.pool.view(torch.uint8), by_triton.pool.view(torch.uint8))
    return by_twin, by_triton


@needs_interpreter
@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_write_kv_triton_is_byte_exact_with_twin(block_size):
    batch = make_paged_batch(SMALL_SPECS, block_size=block_size, num_heads=4, num_kv_heads=2, head_dim=16)
    written_batches(batch)


@needs_interpreter
def test_write_kv_triton_casts_fp32_rows_into_bf16_cache():
    batch = make_paged_batch(SMALL_SPECS, block_size=8, num_heads=4, num_kv_heads=2, head_dim=16)
    pool = batch.pool.to(torch.bfloat16)
    before = pool.clone()
    write_kv_triton(pool[:, 1], batch.key, batch.value, batch.slot_mapping)
    blocks, offsets = batch.slot_mapping // 8, batch.slot_mapping % 8
    # The interpreter rounds fp32 -> bf16 toward zero where CUDA rounds to nearest even (the
    # GPU test below checks bytes), so here: within one bf16 step of the fp32 rows.
    for kv, rows in ((0, batch.key), (1, batch.value)):
        written = pool[blocks, 1, kv, offsets].float()
        assert ((written - rows).abs() <= rows.abs() * 2**-7).all()
    assert torch.equal(pool[:, 0], before[:, 0])


@needs_cuda
def test_write_kv_triton_casts_into_bf16_cache_byte_exact_on_gpu():
    batch = make_paged_batch(SMALL_SPECS, block_size=8, num_heads=4, num_kv_heads=2, head_dim=16, device="cuda")
    pool_twin, pool_triton = batch.pool.to(torch.bfloat16), batch.pool.to(torch.bfloat16)
    write_kv_torch(pool_twin[:, 1], batch.key, batch.value, batch.slot_mapping)
    write_kv_triton(pool_triton[:, 1], batch.key, batch.value, batch.slot_mapping)
    assert torch.equal(pool_twin.view(torch.uint8), pool_triton.view(torch.uint8))


@needs_interpreter
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("heads", list(HEAD_SHAPES))
def test_paged_attention_triton_matches_twin_fp32(block_size, heads):
    num_heads, num_kv_heads = HEAD_SHAPES[heads]
    batch = make_paged_batch(
        SMALL_SPECS, block_size=block_size, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=16
    )
    by_twin, by_triton = written_batches(batch)
    expected = run_attention(by_twin, paged_attention_torch)
    actual = run_attention(by_triton, paged_attention_triton)
    assert max_relative_error(actual, expected) <= 1e-5


@needs_interpreter
@pytest.mark.parametrize("head_dim", [32, 24])
def test_paged_attention_triton_other_head_dims_and_longer_context(head_dim):
    # 24 is not a power of two: the body pads the head dim to 32 and masks it.
    batch = make_paged_batch([(45, 3), (40, 1)], block_size=16, num_heads=2, num_kv_heads=1, head_dim=head_dim, seed=5)
    by_twin, by_triton = written_batches(batch)
    expected = run_attention(by_twin, paged_attention_torch)
    assert max_relative_error(run_attention(by_triton, paged_attention_triton), expected) <= 1e-5


@needs_interpreter
def test_paged_attention_triton_accepts_int64_metadata_and_empty_batch():
    batch = make_paged_batch([(13, 2), (5, 1)], block_size=8, num_heads=4, num_kv_heads=2, head_dim=16, seed=2)
    by_twin, by_triton = written_batches(batch)
    expected = run_attention(by_twin, paged_attention_torch)
    actual = paged_attention_triton(
        by_triton.query, by_triton.layer_cache, by_triton.block_tables.long(), by_triton.seq_lens.long(),
        by_triton.query_start_loc.long(), by_triton.scale,
    )
    assert max_relative_error(actual, expected) <= 1e-5
    empty = paged_attention_triton(
        batch.query[:0], batch.layer_cache, batch.block_tables[:0], batch.seq_lens[:0],
        batch.query_start_loc[:1], batch.scale,
    )
    assert empty.shape == (0, 4, 16)


@needs_interpreter
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("heads", list(HEAD_SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 32])
def test_prefill_tiles_match_twin(block_size, heads, dtype, head_dim):
    num_heads, num_kv_heads = HEAD_SHAPES[heads]
    block_m = prefill_tile(num_heads // num_kv_heads, head_dim).block_m
    batch = written_by_twin(make_paged_batch(
        prefill_specs(block_m), block_size=block_size, num_heads=num_heads, num_kv_heads=num_kv_heads,
        head_dim=head_dim, dtype=dtype, seed=block_size,
    ))
    expected = run_attention(batch, paged_attention_torch)
    actual = run_attention(batch, paged_attention_triton)
    assert actual.dtype == dtype
    # bf16: both round the same fp32 result, a rounding boundary apart at most.
    assert max_relative_error(actual, expected) <= (1e-5 if dtype == torch.float32 else 1e-2)


@needs_interpreter
@pytest.mark.parametrize("head_dim", [16, 32])
def test_prefill_tiles_of_many_sequences_find_their_sequence(head_dim):
    # Tiles are numbered qsl[s] // BLOCK_M + s: many short chunks at unaligned starts, with
    # decodes and empty sequences between them, exercise the binary search on every boundary.
    generator = torch.Generator().manual_seed(head_dim)
    num_queries = torch.randint(0, 40, (24,), generator=generator).tolist()
    prefix = torch.randint(0, 20, (24,), generator=generator).tolist()
    specs = [(n + p, n) for n, p in zip(num_queries, prefix)]
    batch = written_by_twin(make_paged_batch(specs, block_size=8, num_heads=8, num_kv_heads=1,
                                             head_dim=head_dim, seed=head_dim))
    assert prefill_tile(8, head_dim).block_m == 16
    expected = run_attention(batch, paged_attention_torch)
    assert max_relative_error(run_attention(batch, paged_attention_triton), expected) <= 1e-5


@needs_cuda
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("heads", list(HEAD_SHAPES))
def test_paged_attention_triton_matches_twin_bf16_on_gpu(block_size, heads):
    num_heads, num_kv_heads = HEAD_SHAPES[heads]
    specs = [(300, 300), (257, 64), (1, 1), (513, 1), (129, 1), (77, 3)]
    batch = make_paged_batch(specs, block_size=block_size, num_heads=num_heads, num_kv_heads=num_kv_heads,
                             head_dim=64, dtype=torch.bfloat16, device="cuda")
    by_twin, by_triton = written_batches(batch)
    expected = run_attention(by_twin, paged_attention_torch)
    actual = run_attention(by_triton, paged_attention_triton)
    assert actual.dtype == torch.bfloat16
    assert max_relative_error(actual, expected) <= 2e-2


@needs_cuda
@pytest.mark.parametrize("cache_dtype, tolerance", [(torch.bfloat16, 2e-2), (torch.float32, 1e-4)])
def test_prefill_tiles_match_twin_at_serving_shapes_on_gpu(cache_dtype, tolerance):
    # 32 query heads / 8 KV heads, head_dim 128: a long prefill, a chunk after a long prefix, decodes.
    specs = [(1000, 1000), (3000, 517), (1, 1), (2048, 1), (0, 0), (130, 130)]
    batch = make_paged_batch(specs, block_size=16, num_heads=32, num_kv_heads=8, head_dim=128,
                             num_layers=1, layer=0, dtype=cache_dtype, device="cuda")
    written_by_twin(batch)
    expected = run_attention(batch, paged_attention_torch)
    actual = run_attention(batch, paged_attention_triton)
    assert actual.dtype == cache_dtype
    assert max_relative_error(actual, expected) <= tolerance
