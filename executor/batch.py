"""Scheduled requests -> one flat varlen batch (index tensors built with numpy, not per token).

    sequence:          s0 (prefill 5)     s1 (decode)  s2 (prefill 3 on a cached prefix of 16)
    query_start_loc:   0                  5            6                                9
    positions:         0 1 2 3 4          37           16 17 18
    seq_lens:          5                  38           19
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

from executor.models.transformer import BatchInputs
from executor.request_state import RequestState


class PreparedBatch(NamedTuple):
    inputs: BatchInputs
    sampling_states: list[RequestState]  # one per logits row, same order


def build_batch(work: Sequence[tuple[RequestState, int]], block_size: int,
                device: torch.device) -> PreparedBatch:
    """work: (state, num_scheduled_tokens > 0) with state.block_ids already extended and
    state.num_computed_tokens not yet advanced."""
    num_seqs = len(work)
    computed = np.fromiter((state.num_computed_tokens for state, _ in work), np.int64, num_seqs)
    num_scheduled = np.fromiter((n for _, n in work), np.int64, num_seqs)
    seq_lens = computed + num_scheduled
    query_start_loc = np.zeros(num_seqs + 1, np.int64)
    np.cumsum(num_scheduled, out=query_start_loc[1:])
    num_tokens = int(query_start_loc[-1])
    seq_index = np.repeat(np.arange(num_seqs), num_scheduled)
    positions = np.arange(num_tokens) - query_start_loc[seq_index] + computed[seq_index]
    input_ids: list[int] = []
    for state, n in work:
        start = state.num_computed_tokens
        input_ids.extend(state.token_ids[start:start + n])
    block_tables = _block_tables(work, seq_lens, block_size)
    slot_mapping = block_tables[seq_index, positions // block_size] * block_size + positions % block_size
    is_sampling = seq_lens == np.fromiter((len(state.token_ids) for state, _ in work), np.int64, num_seqs)
    logits_indices = query_start_loc[1:][is_sampling] - 1
    logits_query_start_loc = np.zeros(num_seqs + 1, np.int64)
    np.cumsum(is_sampling, out=logits_query_start_loc[1:])
    inputs = BatchInputs(
        input_ids=_to(np.asarray(input_ids, np.int64), device),
        positions=_to(positions, device), slot_mapping=_to(slot_mapping.astype(np.int64), device),
        block_tables=_to(block_tables, device), seq_lens=_to(seq_lens.astype(np.int32), device),
        query_start_loc=_to(query_start_loc.astype(np.int32), device),
        logits_indices=_to(logits_indices, device),
        logits_query_start_loc=_to(logits_query_start_loc.astype(np.int32), device))
    states = [work[i][0] for i in np.flatnonzero(is_sampling)]
    return PreparedBatch(inputs, states)


def _block_tables(work, seq_lens: np.ndarray, block_size: int) -> np.ndarray:
    """int32 [num_seqs, max_blocks]: only the blocks this step's context needs; padding 0."""
    num_blocks = (seq_lens + block_size - 1) // block_size
    table = np.zeros((len(work), int(num_blocks.max())), np.int32)
    for row, ((state, _), n) in enumerate(zip(work, num_blocks.tolist())):
        table[row, :n] = state.block_ids[:n]
    return table


def _to(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device, non_blocking=True)
