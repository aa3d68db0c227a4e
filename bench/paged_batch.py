"""Random paged batches for the kernel tests and the benchmark (not used by serving)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Block-table padding that points far outside the pool: a kernel that reads it crashes or
# fails the comparison, so tests prove padding is ignored.
PADDING_BLOCK_ID = 1 << 30


@dataclass(slots=True)
class PagedBatch:
    pool: Tensor              # [num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]
    layer: int
    query: Tensor             # [num_tokens, num_heads, head_dim]
    key: Tensor               # [num_tokens, num_kv_heads, head_dim], this step's K
    value: Tensor             # [num_tokens, num_kv_heads, head_dim], this step's V
    slot_mapping: Tensor      # int64 [num_tokens]
    block_tables: Tensor      # int32 [num_seqs, max_blocks], padded with PADDING_BLOCK_ID
    seq_lens: Tensor          # int32 [num_seqs]
    query_start_loc: Tensor   # int32 [num_seqs + 1]
    scale: float

    @property
    def layer_cache(self) -> Tensor:
        """pool[:, layer]: the strided view the kernels take."""
        return self.pool[:, self.layer]


def make_paged_batch(
    specs: list[tuple[int, int]], *, block_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
    num_layers: int = 2, layer: int = 1, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0,
) -> PagedBatch:
    """specs: one (context_len, num_queries) per sequence; the queries are the context's tail.

    Blocks are a random permutation of the pool (plus spare blocks nobody owns), so sequences
    are scattered and interleaved. The cached prefix holds random K/V; this step's K/V are
    returned separately and are NOT written yet.
    """
    generator = torch.Generator().manual_seed(seed)
    num_blocks_per_seq = [-(-context_len // block_size) for context_len, _ in specs]
    num_blocks = sum(num_blocks_per_seq) + 3
    pool = torch.randn(num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim, generator=generator)
    order = torch.randperm(num_blocks, generator=generator).tolist()
    max_blocks = max(num_blocks_per_seq, default=0) + 2
    block_tables = torch.full((len(specs), max_blocks), PADDING_BLOCK_ID, dtype=torch.int32)
    slots: list[int] = []
    for seq, (context_len, num_queries) in enumerate(specs):
        owned = [order.pop() for _ in range(num_blocks_per_seq[seq])]
        block_tables[seq, : len(owned)] = torch.tensor(owned, dtype=torch.int32)
        for position in range(context_len - num_queries, context_len):
            slots.append(owned[position // block_size] * block_size + position % block_size)
    num_tokens = len(slots)
    q_lens = torch.tensor([0] + [num_queries for _, num_queries in specs])
    batch = PagedBatch(
        pool=pool, layer=layer,
        query=torch.randn(num_tokens, num_heads, head_dim, generator=generator),
        key=torch.randn(num_tokens, num_kv_heads, head_dim, generator=generator),
        value=torch.randn(num_tokens, num_kv_heads, head_dim, generator=generator),
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        block_tables=block_tables,
        seq_lens=torch.tensor([context_len for context_len, _ in specs], dtype=torch.int32),
        query_start_loc=torch.cumsum(q_lens, 0).to(torch.int32),
        scale=head_dim**-0.5,
    )
    return to_device(batch, dtype, device)


def to_device(batch: PagedBatch, dtype: torch.dtype, device: str) -> PagedBatch:
    """The same batch with float tensors in dtype and everything on device."""
    return PagedBatch(
        pool=batch.pool.to(device=device, dtype=dtype), layer=batch.layer,
        query=batch.query.to(device=device, dtype=dtype),
        key=batch.key.to(device=device, dtype=dtype),
        value=batch.value.to(device=device, dtype=dtype),
        slot_mapping=batch.slot_mapping.to(device), block_tables=batch.block_tables.to(device),
        seq_lens=batch.seq_lens.to(device), query_start_loc=batch.query_start_loc.to(device),
        scale=batch.scale,
    )
