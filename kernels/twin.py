"""Torch twins of the paged kernels: the CPU production path and the oracle for the Triton bodies.

Layer cache (one strided view of the block-major pool):

    layer_cache[block, 0 = K | 1 = V, offset_in_block, kv_head, :head_dim]
    slot = block * block_size + offset_in_block

Attention gathers a sequence's blocks into contiguous K/V (one index_select each into a reused
scratch buffer: a gather is the only way to read paged memory from torch) and runs one SDPA
call per prefill chunk. Decode tokens (q_len 1) are batched: sequences of similar length share
one padded SDPA call, with a key mask only where their lengths differ.

Measured here (2 cores, OMP_NUM_THREADS=1, fp32, 4 KV heads x 3 queries per group, D 64,
context 512), SDPA alone, gathers excluded:
- prefill 512: SDPA with enable_gqa 6.8 ms (explicit bool mask 7.8 ms); KV heads expanded
  to all heads 25 ms; group folded into the query rows 28 ms.
- decode, 256 sequences: one batched call with the group as the query axis 36 ms, a Python
  loop of per-sequence calls 44 ms; einsum/matmul + softmax 176 ms.
End to end (bench/kernels.py), decode x256: one padded call 80 ms; buckets of <= 8192 tokens
(16 sequences, gathered K/V stay in cache) 56 ms vs budgets 2048: 76, 4096: 65, 16384: 61,
32768: 79 ms; contiguous SDPA 35 ms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.checks import check_paged_attention, check_write_kv
from kernels.workspace import scratch

# A decode bucket holds sequences whose context is at least this fraction of the bucket's
# longest, so padding wastes at most 1/3 of a bucket's reads.
MIN_BUCKET_FILL = 0.75
# Padded tokens per decode SDPA call (measured best, see above).
MAX_DECODE_TOKENS = 8192
# Prefill chunks over at most this many context tokens go to the native kernel (csrc/
# paged_prefill_cpu.cpp), longer ones to SDPA (measured no further): bf16 K/V, 12/4 heads, D 64,
# 2 threads, AVX-512 Xeon, the native kernel vs SDPA at chunk @ context 300 @ 300 1.2 vs 2.7 ms,
# 512 @ 512 2.7 vs 6.3, 256 @ 1024 4.8 vs 7.3, 512 @ 1536 13.2 vs 19.9, 512 @ 4096 50 vs 60,
# 2048 @ 8192 406 vs 577 (fp32 K/V: 1.1-2.2x likewise).
MAX_NATIVE_PREFILL_CONTEXT = 8192
_HAS_ENABLE_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def write_kv_torch(layer_cache: Tensor, key: Tensor, value: Tensor, slot_mapping: Tensor) -> None:
    check_write_kv(layer_cache, key, value, slot_mapping)
    block_size = layer_cache.shape[2]
    slots = slot_mapping.long()
    blocks, offsets = slots // block_size, slots % block_size
    # index_put_ on the strided view writes through to the pool.
    layer_cache[blocks, 0, offsets] = key.to(layer_cache.dtype)
    layer_cache[blocks, 1, offsets] = value.to(layer_cache.dtype)


def paged_attention_torch(
    query: Tensor, layer_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
    query_start_loc: Tensor, scale: float, native_decode=None, native_prefill=None,
) -> Tensor:
    """native_decode / native_prefill: the compiled CPU kernels (kernels/cpu_native.py) for the
    one-query sequences and for prefill chunks of contexts up to MAX_NATIVE_PREFILL_CONTEXT;
    None keeps everything in torch (the oracle)."""
    check_paged_attention(query, layer_cache, block_tables, seq_lens, query_start_loc)
    context_lens = seq_lens.tolist()
    starts = query_start_loc.tolist()
    if native_decode is not None and starts == list(range(len(context_lens) + 1)):
        # Every sequence decodes one token, in order: no rows to pick out or put back (a
        # tenth of a decode step's attention at 64 sequences).
        rows = query if query.stride(-1) == 1 else query.contiguous()   # the kernel reads any row strides
        return native_decode(rows, layer_cache, block_tables.int(), seq_lens.int(), scale).to(query.dtype)
    out = torch.empty(query.shape, dtype=torch.float32, device=query.device)
    decode_seqs = []
    for seq, context_len in enumerate(context_lens):
        start, end = starts[seq], starts[seq + 1]
        assert 0 <= end - start <= context_len, f"sequence {seq}: {end - start} queries > context {context_len}"
        if end - start == 1:
            decode_seqs.append(seq)
        elif end > start and native_prefill is not None and context_len <= MAX_NATIVE_PREFILL_CONTEXT:
            out[start:end] = native_prefill(query[start:end], layer_cache, block_tables[seq], context_len, scale)
        elif end > start:
            out[start:end] = _attend_chunk(query[start:end], layer_cache, block_tables[seq], context_len, scale)
    if native_decode is not None and decode_seqs:
        rows = torch.tensor([starts[seq] for seq in decode_seqs], device=query.device)
        index = torch.tensor(decode_seqs, device=query.device)
        out[rows] = native_decode(query[rows].float().contiguous(), layer_cache,
                                  block_tables[index].int(), seq_lens[index].int(), scale)
        decode_seqs = []
    for bucket in _decode_buckets(decode_seqs, context_lens, MAX_DECODE_TOKENS):
        rows = torch.tensor([starts[seq] for seq in bucket], device=query.device)
        lens = [context_lens[seq] for seq in bucket]
        out[rows] = _attend_decodes(query[rows], layer_cache, block_tables[bucket], lens, scale)
    return out.to(query.dtype)


def gather_blocks(layer_cache: Tensor, block_ids: Tensor) -> tuple[Tensor, Tensor]:
    """K and V of the given blocks, fp32 [len(block_ids) * block_size, kv_heads, D] each.

    The result lives in this thread's scratch buffer: valid until the next gather.
    """
    _, _, block_size, num_kv_heads, head_dim = layer_cache.shape
    num_blocks = block_ids.shape[0]
    block_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    buffer = scratch(2 * num_blocks * block_size * num_kv_heads * head_dim, layer_cache.dtype, layer_cache.device)
    key, value = buffer.view(2, *block_shape).unbind(0)
    torch.index_select(layer_cache[:, 0], 0, block_ids, out=key)
    torch.index_select(layer_cache[:, 1], 0, block_ids, out=value)
    token_shape = (num_blocks * block_size, num_kv_heads, head_dim)
    return key.view(token_shape).float(), value.view(token_shape).float()


def _attend_chunk(query: Tensor, layer_cache: Tensor, block_table: Tensor, context_len: int, scale: float) -> Tensor:
    """One sequence's q_len queries, the last q_len positions of its context, causal."""
    num_queries = query.shape[0]
    block_size = layer_cache.shape[2]
    key, value = gather_blocks(layer_cache, block_table[: -(-context_len // block_size)].long())
    key, value = key[:context_len], value[:context_len]
    if num_queries == context_len:
        mask = None
    else:
        # Bottom-right aligned causal mask: query i sits at position context_len - q_len + i.
        positions = torch.arange(context_len - num_queries, context_len, device=query.device)
        mask = torch.arange(context_len, device=query.device)[None, :] <= positions[:, None]
    out = _sdpa(query.float().transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), mask, scale)
    return out.transpose(0, 1)


def _sdpa(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """query [H, L, D], key/value [H_kv, S, D]; mask None means causal with L == S."""
    is_causal = mask is None
    if _HAS_ENABLE_GQA:
        return F.scaled_dot_product_attention(
            query[None], key[None], value[None], attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=True
        )[0]
    group = query.shape[0] // key.shape[0]
    key, value = key.repeat_interleave(group, dim=0), value.repeat_interleave(group, dim=0)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=is_causal, scale=scale)


def _decode_buckets(decode_seqs: list[int], context_lens: list[int], max_tokens: int) -> list[list[int]]:
    """Group decode sequences, longest first, so each bucket's padding stays small and its
    gathered K/V (padded length x sequences <= max_tokens) stays cache-resident."""
    buckets: list[list[int]] = []
    longest = 0
    for seq in sorted(decode_seqs, key=lambda s: -context_lens[s]):
        is_too_short = context_lens[seq] < MIN_BUCKET_FILL * longest
        if not buckets or is_too_short or (len(buckets[-1]) + 1) * longest > max_tokens:
            buckets.append([])
            longest = context_lens[seq]
        buckets[-1].append(seq)
    return buckets


def _attend_decodes(query: Tensor, layer_cache: Tensor, block_tables: Tensor, lens: list[int], scale: float) -> Tensor:
    """One query per sequence at its last position: padded batch, key-padding mask, one SDPA."""
    num_seqs, num_heads, head_dim = query.shape
    _, _, block_size, num_kv_heads, _ = layer_cache.shape
    max_len = max(lens)
    num_blocks = -(-max_len // block_size)
    device = query.device
    lens_t = torch.tensor(lens, device=device)
    # Padding entries of the block table may hold anything: point them at block 0, masked out below.
    is_used = torch.arange(num_blocks, device=device)[None, :] * block_size < lens_t[:, None]
    block_ids = torch.where(is_used, block_tables[:, :num_blocks].long(), 0)
    shape = (num_seqs, num_blocks * block_size, num_kv_heads, head_dim)
    key, value = gather_blocks(layer_cache, block_ids.flatten())
    key, value = key.view(shape)[:, :max_len].transpose(1, 2), value.view(shape)[:, :max_len].transpose(1, 2)
    mask = None
    if min(lens) < max_len:
        mask = (torch.arange(max_len, device=device)[None, :] < lens_t[:, None])[:, None, None, :]
    # The group of query heads sharing a KV head plays the role of the query-length axis.
    group = num_heads // num_kv_heads
    q = query.float().view(num_seqs, num_kv_heads, group, head_dim)
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scale)
    return out.reshape(num_seqs, num_heads, head_dim)
