"""The executor as a function of the plan: validate, update request state, forward, sample."""
from __future__ import annotations

import time
from typing import NamedTuple

import torch
from torch import Tensor

from executor.batch import build_batch
from executor.kv_pool import KVPool
from executor.errors import PlanError
from executor.models.loader import LoadedModel
from executor.models.transformer import BatchInputs
from executor.page_mover import PageMover
from executor.request_state import Limits, RequestState, PlannedRequest, check_plan
from executor.sampler import RowContext, sample
from protos.v1 import common_pb2, executor_pb2
from runtime.arenas import DEFAULT_ARENA_DIR


class StepOutput(NamedTuple):
    result: executor_pb2.StepResult
    logits: Tensor | None            # fp32 [N, vocab], the rows that were sampled (a test hook)
    sampled_request_ids: list[str]   # request id of each logits row


class Runner:
    """Holds per-request state between steps. Not thread-safe: the daemon serialises Step."""

    def __init__(self, loaded: LoadedModel, pool: KVPool, max_num_batched_tokens: int, max_num_seqs: int,
                 arena_dir: str = DEFAULT_ARENA_DIR):
        self.loaded, self.pool = loaded, pool
        config = loaded.config
        self.limits = Limits(num_blocks=pool.num_blocks, block_size=pool.block_size,
                             vocab_size=config.vocab_size, max_model_len=config.max_model_len,
                             max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs)
        self.requests: dict[str, RequestState] = {}
        self.mover = PageMover(pool, arena_dir)

    def warm_up(self) -> float:
        """One prefill and one decode forward on block 0 before the first request (oneDNN builds
        its primitives, the allocator its pools, on a first call: the first real step took ~1.3 s
        instead of ~30 ms). Writes K/V only into block 0, which no request owns yet. Returns
        the seconds it took."""
        start = time.perf_counter()
        length = min(self.pool.block_size, self.limits.max_model_len)
        device = self.loaded.device
        for num_tokens in (length, 1):
            batch = BatchInputs(
                input_ids=torch.zeros(num_tokens, dtype=torch.int64, device=device),
                positions=torch.arange(num_tokens, device=device),
                slot_mapping=torch.arange(num_tokens, device=device),
                block_tables=torch.zeros((1, 1), dtype=torch.int32, device=device),
                seq_lens=torch.tensor([num_tokens], dtype=torch.int32, device=device),
                query_start_loc=torch.tensor([0, num_tokens], dtype=torch.int32, device=device),
                logits_indices=torch.tensor([num_tokens - 1], device=device),
                logits_query_start_loc=torch.tensor([0, 1], dtype=torch.int32, device=device))
            self.loaded.model.logits(batch, self.pool.tensor)
        self.pool.tensor[0].zero_()
        return time.perf_counter() - start

    def reset(self) -> int:
        """Forget every request; wait for moves in flight (returns how many there were)."""
        self.requests.clear()
        return self.mover.drain()

    def step(self, plan: executor_pb2.StepPlan) -> StepOutput:
        """Apply one plan. PlanError (nothing changed) if it is malformed."""
        scheduled = check_plan(plan, self.requests, self.limits, self.mover.arena_slots)
        reason = self.mover.check_ids([m.move_id for m in (*plan.loads, *plan.stores, *plan.blocking_loads)])
        if reason is not None:
            raise PlanError(reason)
        for request_id in plan.finished_request_ids:
            self.requests.pop(request_id, None)
        work = self._admit(scheduled)
        start = time.perf_counter()
        if plan.blocking_loads:
            self.mover.submit(plan.blocking_loads, ())
            self.mover.wait_for([m.move_id for m in plan.blocking_loads])
        blocking_load_seconds = time.perf_counter() - start
        self.mover.submit(plan.loads, plan.stores)
        start = time.perf_counter()
        logits, states = self._forward(work)
        result = executor_pb2.StepResult(step_id=plan.step_id, num_computed_tokens=plan.num_scheduled_tokens,
                                         blocking_load_seconds=blocking_load_seconds)
        if states:
            self._sample_into(result, logits, states)
        result.forward_seconds = time.perf_counter() - start
        for state, num_scheduled in work:
            state.num_computed_tokens += num_scheduled
        moves = self.mover.collect(0.0 if work else plan.wait_for_moves_s)
        result.done_moves.extend(moves.done)
        result.failed_moves.extend(moves.failed)
        return StepOutput(result, logits, [state.request_id for state in states])

    def _admit(self, scheduled: list[PlannedRequest]) -> list[tuple[RequestState, int]]:
        work = []
        for item in scheduled:
            self.requests[item.state.request_id] = item.state
            item.state.block_ids.extend(item.new_block_ids)
            if item.num_scheduled_tokens:
                work.append((item.state, item.num_scheduled_tokens))
        return work

    def _forward(self, work: list[tuple[RequestState, int]]) -> tuple[Tensor | None, list[RequestState]]:
        if not work:
            return None, []
        batch = build_batch(work, self.pool.block_size, self.loaded.device)
        if not batch.sampling_states:
            # Only prefill chunks: K/V must still be written, but no logits are needed.
            self.loaded.model.hidden_states(batch.inputs, self.pool.tensor)
            return None, []
        return self.loaded.model.logits(batch.inputs, self.pool.tensor), batch.sampling_states

    def _sample_into(self, result, logits: Tensor, states: list[RequestState]) -> None:
        rows = [RowContext(s.sampling, s.token_ids, s.num_prompt_tokens) for s in states]
        output = sample(logits, rows)
        for state, token_id, logprobs in zip(states, output.token_ids, output.logprobs):
            state.token_ids.append(token_id)
            sampled = result.sampled.add(request_id=state.request_id, token_id=token_id)
            if logprobs is not None:
                sampled.logprobs.CopyFrom(common_pb2.TokenLogprobs(
                    logprob=logprobs.logprob, top_token_ids=logprobs.top_token_ids,
                    top_logprobs=logprobs.top_logprobs))
