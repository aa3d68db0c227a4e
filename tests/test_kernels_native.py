"""The compiled CPU decode kernel equals the torch twin (the oracle) on decode-only and mixed
batches, across block sizes, GQA groups, head sizes (64 and 128 are compiled specially) and odd
lengths."""
import pytest
import torch

from kernels import paged_attention
from kernels.cpu_native import native_decode
from kernels.twin import paged_attention_torch

native = native_decode()
pytestmark = pytest.mark.skipif(native is None, reason="no C++ compiler or ninja on this host")


def make_batch(block_size, num_heads, num_kv_heads, q_lens, ctx_lens, seed=0, head_dim=32):
    generator = torch.Generator().manual_seed(seed)
    num_blocks = 64
    pool = torch.randn(num_blocks, 3, 2, block_size, num_kv_heads, head_dim, generator=generator)
    layer_cache = pool[:, 1]                                  # strided, as in the executor
    max_blocks = max(-(-c // block_size) for c in ctx_lens)
    tables = torch.stack([torch.randperm(num_blocks, generator=generator)[:max_blocks]
                          for _ in ctx_lens]).int()
    query = torch.randn(sum(q_lens), num_heads, head_dim, generator=generator)
    starts = torch.tensor([0] + q_lens).cumsum(0).int()
    return query, layer_cache, tables, torch.tensor(ctx_lens).int(), starts


@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("num_heads, num_kv_heads", [(4, 4), (6, 2), (8, 1)])
def test_native_decode_equals_twin(block_size, num_heads, num_kv_heads):
    ctx_lens = [1, 7, block_size, block_size + 1, 3 * block_size - 1, 100]
    q_lens = [1] * len(ctx_lens)
    batch = make_batch(block_size, num_heads, num_kv_heads, q_lens, ctx_lens)
    expected = paged_attention_torch(*batch, scale=0.17)
    got = paged_attention_torch(*batch, scale=0.17, native_decode=native)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head_dim", [64, 128, 80])
def test_native_decode_equals_twin_per_head_size(head_dim):
    ctx_lens = [1, 16, 17, 95, 300]
    batch = make_batch(16, 12, 4, [1] * len(ctx_lens), ctx_lens, seed=5, head_dim=head_dim)
    scale = head_dim ** -0.5
    torch.testing.assert_close(paged_attention_torch(*batch, scale=scale, native_decode=native),
                               paged_attention_torch(*batch, scale=scale), atol=1e-5, rtol=1e-5)


def test_mixed_prefill_and_decode_batch_through_the_dispatcher():
    ctx_lens, q_lens = [40, 9, 33, 1, 60], [1, 9, 5, 1, 1]   # decodes, a prefill, a chunk
    batch = make_batch(16, 6, 2, q_lens, ctx_lens, seed=3)
    torch.testing.assert_close(paged_attention(*batch, scale=0.2), paged_attention_torch(*batch, scale=0.2),
                               atol=1e-5, rtol=1e-5)
