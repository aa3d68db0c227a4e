"""The compiled CPU kernels equal their torch forms: decode attention equals the torch twin (the
oracle) on decode-only and mixed batches, across block sizes, GQA groups, head sizes (64 and 128
are compiled specially), odd lengths and fp32/fp16/bf16 caches; the fused RMSNorm, SiLU-and-mul
and RoPE equal the model's torch forms; the small-M and the packed linear equal F.linear; prefill
attention equals the twin's SDPA on whole prompts and on chunks of a longer context."""
import pytest
import torch
import torch.nn.functional as F

from executor.models.transformer import apply_rope, rms_norm
from kernels import paged_attention
from kernels.cpu_native import native_decode, native_ops, native_prefill
from kernels.twin import MAX_NATIVE_PREFILL_CONTEXT, paged_attention_torch, write_kv_torch

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


@pytest.mark.parametrize("block_size, num_heads, num_kv_heads, head_dim", [
    (16, 12, 4, 64),    # the model's shape at the two compiled head sizes ...
    (16, 12, 4, 128),
    (16, 12, 4, 80),    # ... and at a runtime one
    (8, 14, 2, 64),     # GQA groups of 7, blocks of 8
    (32, 7, 1, 128),    # one KV head, blocks of 32
    (16, 16, 16, 64),   # no GQA
    (16, 5, 5, 128),
])
def test_native_decode_equals_twin_per_shape(block_size, num_heads, num_kv_heads, head_dim):
    """head_dim 64 and 128 are compiled with fixed trip counts, others not: group and block
    shapes other than the model's, lengths on and off the block edges."""
    ctx_lens = [1, 15, 16, 17, 33, 95, 255, 300]
    batch = make_batch(block_size, num_heads, num_kv_heads, [1] * len(ctx_lens), ctx_lens, seed=5,
                       head_dim=head_dim)
    scale = head_dim ** -0.5
    torch.testing.assert_close(paged_attention_torch(*batch, scale=scale, native_decode=native),
                               paged_attention_torch(*batch, scale=scale), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_native_decode_equals_twin_where_the_softmax_is_peaked_or_flat(head_dim):
    """Scores spread over hundreds (exp underflows for all but a few tokens) and all equal:
    the AVX-512 body's polynomial exp and its clamp agree with torch's softmax."""
    ctx_lens = [1, 2, 31, 64, 257]
    query, layer_cache, tables, lens, starts = make_batch(16, 12, 4, [1] * len(ctx_lens), ctx_lens, seed=9,
                                                          head_dim=head_dim)
    for scale in (40.0 / head_dim, 0.0):
        torch.testing.assert_close(native(query, layer_cache, tables, lens, scale),
                                   paged_attention_torch(query, layer_cache, tables, lens, starts, scale=scale),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("query_dtype", [torch.bfloat16, torch.float16])
def test_native_decode_reads_16_bit_and_strided_queries_as_their_fp32_values(query_dtype):
    """The executor passes q as it comes out of the fused qkv: 16-bit, rows strided apart."""
    ctx_lens = [1, 16, 17, 95, 300]
    _, layer_cache, tables, lens, _ = make_batch(16, 12, 4, [1] * len(ctx_lens), ctx_lens, seed=11, head_dim=64)
    fused = torch.randn(len(ctx_lens), (12 + 2 * 4) * 64, generator=torch.Generator().manual_seed(3)).to(query_dtype)
    query = fused[:, :12 * 64].view(len(ctx_lens), 12, 64)   # strided rows, dense head_dim
    assert not query.is_contiguous()
    expected = native(query.float().contiguous(), layer_cache, tables, lens, 0.125)
    assert torch.equal(native(query, layer_cache, tables, lens, 0.125), expected)
    with pytest.raises(RuntimeError, match="query dtype"):
        native(query.double(), layer_cache, tables, lens, 0.125)


@pytest.mark.parametrize("cache_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128, 40])   # 40: the F16C loop's 8-wide body plus a tail
def test_native_decode_reads_16_bit_caches_like_the_twin(cache_dtype, head_dim):
    ctx_lens, q_lens = [1, 16, 17, 95, 300, 9], [1, 1, 1, 1, 1, 9]   # decodes beside a prefill
    query, layer_cache, *rest = make_batch(16, 12, 4, q_lens, ctx_lens, seed=7, head_dim=head_dim)
    layer_cache = layer_cache.to(cache_dtype)
    scale = head_dim ** -0.5
    got = paged_attention(query, layer_cache, *rest, scale=scale)
    # The twin widens the same rounded values: only the order of fp32 sums differs.
    torch.testing.assert_close(got, paged_attention_torch(query, layer_cache, *rest, scale=scale),
                               atol=1e-5, rtol=1e-5)
    assert native(query[:5], layer_cache, rest[0][:5], rest[1][:5], scale).dtype == torch.float32


def test_native_decode_rejects_a_cache_dtype_it_cannot_read():
    query, layer_cache, tables, lens, _ = make_batch(16, 4, 4, [1], [20])
    with pytest.raises(RuntimeError, match="cache dtype must be float32, float16 or bfloat16"):
        native(query, layer_cache.double(), tables, lens, 0.1)


def test_mixed_prefill_and_decode_batch_through_the_dispatcher():
    ctx_lens, q_lens = [40, 9, 33, 1, 60], [1, 9, 5, 1, 1]   # decodes, a prefill, a chunk
    batch = make_batch(16, 6, 2, q_lens, ctx_lens, seed=3)
    torch.testing.assert_close(paged_attention(*batch, scale=0.2), paged_attention_torch(*batch, scale=0.2),
                               atol=1e-5, rtol=1e-5)


# ---- prefill attention (csrc/paged_prefill_cpu.cpp) against the twin's SDPA --------------------
prefill = native_prefill()


@pytest.mark.parametrize("block_size, num_heads, num_kv_heads, head_dim", [
    (16, 12, 4, 64),    # the model's shape
    (16, 12, 4, 128),
    (8, 14, 2, 80),     # GQA groups of 7, blocks of 8, a head size of no special case
    (32, 7, 1, 64),     # one KV head
    (16, 4, 4, 32),     # no GQA
])
def test_native_prefill_equals_twin_on_prompts_and_chunks(block_size, num_heads, num_kv_heads, head_dim):
    """Whole prompts (q_len = context) and chunks (the last q_len positions of a longer context),
    lengths on and off the edges of blocks and of the kernel's 32-query blocks, in one batch."""
    ctx_lens = [2, 31, 33, 64, 97, 300, 130]
    q_lens = [2, 31, 1 + 32, 64, 5, 300, 65]
    batch = make_batch(block_size, num_heads, num_kv_heads, q_lens, ctx_lens, seed=13, head_dim=head_dim)
    scale = head_dim ** -0.5
    torch.testing.assert_close(paged_attention_torch(*batch, scale=scale, native_prefill=prefill),
                               paged_attention_torch(*batch, scale=scale), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cache_dtype", [torch.float16, torch.bfloat16])
def test_native_prefill_reads_16_bit_caches_and_strided_16_bit_queries(cache_dtype):
    """As the executor calls it: q a strided view of the fused qkv, in the cache's dtype; the
    result is fp32 and equals the twin, which widens the same rounded values."""
    _, layer_cache, tables, lens, _ = make_batch(16, 12, 4, [1], [200], seed=17, head_dim=64)
    layer_cache = layer_cache.to(cache_dtype)
    fused = torch.randn(150, (12 + 2 * 4) * 64, generator=torch.Generator().manual_seed(4)).to(cache_dtype)
    query = fused[:, :12 * 64].view(150, 12, 64)
    assert not query.is_contiguous()
    got = prefill(query, layer_cache, tables[0], 200, 0.125)
    assert got.dtype == torch.float32
    expected = paged_attention_torch(query.float(), layer_cache, tables, lens, torch.tensor([0, 150]).int(), 0.125)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_native_prefill_where_the_softmax_is_peaked_or_flat():
    """Peaked: scores spread over hundreds, against the twin. Flat (scale 0): every query's
    output is the mean of the V rows up to its position (the twin's SDPA gives NaN there)."""
    query, layer_cache, tables, lens, starts = make_batch(16, 12, 4, [100], [100], seed=19, head_dim=64)
    torch.testing.assert_close(prefill(query, layer_cache, tables[0], 100, 40.0 / 64),
                               paged_attention_torch(query, layer_cache, tables, lens, starts, scale=40.0 / 64),
                               atol=1e-5, rtol=1e-5)
    values = layer_cache[tables[0].long(), 1].reshape(-1, 4, 64)[:100]           # [t, kv head, D]
    running_mean = values.cumsum(0) / torch.arange(1, 101)[:, None, None]
    expected = running_mean.repeat_interleave(3, dim=1)                           # query head h reads kv h // 3
    torch.testing.assert_close(prefill(query, layer_cache, tables[0], 100, 0.0), expected, atol=1e-5, rtol=1e-5)


def test_the_dispatcher_takes_the_native_prefill_only_up_to_its_context_bound(monkeypatch):
    """Chunks over at most MAX_NATIVE_PREFILL_CONTEXT tokens go to the kernel, longer ones to SDPA."""
    calls = []
    monkeypatch.setattr("kernels.native_prefill", lambda: lambda *args: calls.append(args[3]) or prefill(*args))
    bound = 480   # the real bound's contexts outgrow make_batch's pool of 64 blocks of 16
    assert MAX_NATIVE_PREFILL_CONTEXT > bound
    monkeypatch.setattr("kernels.twin.MAX_NATIVE_PREFILL_CONTEXT", bound)
    batch = make_batch(16, 6, 2, [9, 3], [bound, bound + 1], seed=21)
    torch.testing.assert_close(paged_attention(*batch, scale=0.2), paged_attention_torch(*batch, scale=0.2),
                               atol=1e-5, rtol=1e-5)
    assert calls == [bound]


def test_native_prefill_rejects_what_it_cannot_compute():
    query, layer_cache, tables, _, _ = make_batch(16, 6, 2, [20], [20])
    with pytest.raises(RuntimeError, match="more queries than context"):
        prefill(query, layer_cache, tables[0], 10, 0.1)
    with pytest.raises(RuntimeError, match="a block for every context position"):
        prefill(query, layer_cache, tables[0][:1], 20, 0.1)
    with pytest.raises(RuntimeError, match="multiple of KV heads"):
        prefill(query[:, :5], layer_cache, tables[0], 20, 0.1)
    with pytest.raises(RuntimeError, match="cache dtype"):
        prefill(query, layer_cache.double(), tables[0], 20, 0.1)


# ---- the fused CPU layers (csrc/cpu_ops.cpp) against the torch forms of the model -------------
ops = native_ops()


# bf16: the kernels compute in fp32 and round where torch's bf16 ops store; rsqrt vs 1/sqrt
# and the order of the sum of squares may still move a value by one bf16 step.
FUSED_DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", FUSED_DTYPES)
def test_fused_rms_norms_equal_the_torch_form(dtype):
    generator = torch.Generator().manual_seed(7)
    x, delta = torch.randn(37, 96, generator=generator).to(dtype), torch.randn(37, 96, generator=generator).to(dtype)
    weight = torch.randn(96, generator=generator).to(dtype)
    torch.testing.assert_close(ops.rms_norm(x, weight, 1e-6), rms_norm(x, weight, 1e-6))
    residual = x.clone()
    normed = ops.add_rms_norm(residual, delta, weight, 1e-5)
    torch.testing.assert_close(residual, x + delta, rtol=0, atol=0)   # updated in place, rounded as torch
    torch.testing.assert_close(normed, rms_norm(x + delta, weight, 1e-5))
    strided = torch.randn(5, 200, generator=generator).to(dtype)[:, :96]   # rows need not be dense
    torch.testing.assert_close(ops.rms_norm(strided, weight, 1e-6), rms_norm(strided, weight, 1e-6))


@pytest.mark.parametrize("dtype", FUSED_DTYPES)
def test_fused_silu_and_mul_equals_the_torch_form(dtype):
    gate_up = (torch.randn(19, 2 * 136, generator=torch.Generator().manual_seed(8)) * 4).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(ops.silu_and_mul(gate_up), F.silu(gate) * up)


@pytest.mark.parametrize("dtype", FUSED_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 32])
def test_fused_rope_rotates_q_and_k_heads_in_place_and_leaves_v(head_dim, dtype):
    num_tokens, num_heads, num_kv_heads = 11, 6, 2
    generator = torch.Generator().manual_seed(9)
    width = (num_heads + 2 * num_kv_heads) * head_dim
    qkv = torch.randn(num_tokens, width, generator=generator).to(dtype)
    angles = torch.rand(num_tokens, head_dim // 2, generator=generator) * 50
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(dtype), torch.cat([angles.sin()] * 2, -1).to(dtype)
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], -1)
    expected_q = apply_rope(q.reshape(num_tokens, num_heads, head_dim), cos[:, None], sin[:, None])
    expected_k = apply_rope(k.reshape(num_tokens, num_kv_heads, head_dim), cos[:, None], sin[:, None])
    expected_v = v.clone()
    ops.rope_inplace(qkv, cos, sin, num_heads + num_kv_heads, head_dim)
    torch.testing.assert_close(q.reshape(num_tokens, num_heads, head_dim), expected_q)
    torch.testing.assert_close(k.reshape(num_tokens, num_kv_heads, head_dim), expected_k)
    assert torch.equal(v, expected_v)


def test_fused_layers_reject_what_they_cannot_compute():
    with pytest.raises(RuntimeError, match="fp32 or bf16 only"):
        ops.rms_norm(torch.randn(2, 8, dtype=torch.float64), torch.randn(8), 1e-6)
    with pytest.raises(RuntimeError, match="every tensor must have x's dtype"):
        ops.rms_norm(torch.randn(2, 8, dtype=torch.bfloat16), torch.randn(8), 1e-6)
    with pytest.raises(RuntimeError, match="heads exceed the row"):
        ops.rope_inplace(torch.randn(2, 64), torch.randn(2, 32), torch.randn(2, 32), 3, 32)


@pytest.mark.parametrize("rows, width, outputs", [(1, 64, 5), (2, 768, 257), (5, 770, 9), (7, 33, 4), (48, 2048, 131)])
def test_small_linear_equals_f_linear(rows, width, outputs):
    """Every x-row count of a tile (4, 3, 2, 1 left over), weight rows past the 4-row tiles, and
    widths that are not a multiple of 16 (the masked tail)."""
    generator = torch.Generator().manual_seed(10)
    weight = torch.randn(outputs, width, generator=generator)
    x = torch.randn(rows, width + 3, generator=generator)[:, :width]   # strided rows
    torch.testing.assert_close(ops.small_linear(x, weight), F.linear(x, weight), atol=2e-4, rtol=1e-5)


def test_small_linear_rejects_what_it_cannot_compute():
    with pytest.raises(RuntimeError, match="fp32 only"):
        ops.small_linear(torch.randn(2, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.small_linear(torch.randn(2, 8), torch.randn(8, 3).t())


needs_packed = pytest.mark.skipif(not ops.packed_linear_is_available(), reason="this torch has no MKL packed sgemm")


@needs_packed
@pytest.mark.parametrize("rows", [1, 2, 21, 128, 515])
@pytest.mark.parametrize("outputs, width", [(768, 768), (131, 770), (5, 33)])
def test_packed_linear_equals_f_linear(rows, outputs, width):
    """One packed copy serves every row count; strided x rows; widths off MKL's panel sizes."""
    generator = torch.Generator().manual_seed(11)
    weight = torch.randn(outputs, width, generator=generator)
    x = torch.randn(rows, width + 3, generator=generator)[:, :width]   # strided rows
    packed = ops.pack_linear_weight(weight)
    torch.testing.assert_close(ops.packed_linear(x, packed), F.linear(x, weight), atol=2e-4, rtol=1e-5)
    assert ops.packed_linear(x[:0], packed).shape == (0, outputs)


@needs_packed
def test_packed_linear_rejects_a_pack_of_another_shape():
    packed = ops.pack_linear_weight(torch.randn(64, 32))
    assert packed.shape[1:] == (64, 32)
    with pytest.raises(RuntimeError, match="with x's K"):
        ops.packed_linear(torch.randn(4, 48), packed)
    with pytest.raises(RuntimeError, match="with x's K"):
        ops.packed_linear(torch.randn(4, 32), packed[:1].clone())
    with pytest.raises(RuntimeError, match="fp32"):
        ops.pack_linear_weight(torch.randn(64, 32, dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [4, 16])
def test_native_write_kv_is_byte_exact_with_the_twin_and_leaves_other_layers_alone(dtype, block_size):
    generator = torch.Generator().manual_seed(12)
    pool = torch.randn(9, 3, 2, block_size, 2, 32, generator=generator).to(dtype)
    qkv = torch.randn(7, 3 * 2 * 32, generator=generator).to(dtype)   # tokens strided, as in the model
    key, value = (part.view(7, 2, 32) for part in qkv.split([64, 64, 64], dim=-1)[:2])
    slots = torch.tensor([0, 5, block_size, 3 * block_size - 1, 8 * block_size, 2, 9 * block_size - 1])
    expected = pool.clone()
    write_kv_torch(expected[:, 1], key, value, slots)
    ops.write_kv(pool[:, 1], key, value, slots)
    assert torch.equal(pool.view(torch.uint8), expected.view(torch.uint8))


def test_native_write_kv_rejects_what_it_cannot_write():
    pool = torch.zeros(2, 2, 4, 2, 8)
    rows = torch.zeros(3, 2, 8)
    with pytest.raises(RuntimeError, match="dtypes differ"):
        ops.write_kv(pool, rows.bfloat16(), rows.bfloat16(), torch.arange(3))
    with pytest.raises(RuntimeError, match="slot 8 is outside the cache"):
        ops.write_kv(pool, rows, rows, torch.tensor([0, 1, 8]))
