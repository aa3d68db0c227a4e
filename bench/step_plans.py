"""Small builders of StepPlan messages (tests, benchmarks, tools); the scheduler builds its own."""
from __future__ import annotations

from typing import Sequence

from protos.v1 import common_pb2, executor_pb2


def new_request(request_id: str, prompt: Sequence[int], block_ids: Sequence[int], *,
                num_scheduled_tokens: int | None = None, num_computed_tokens: int = 0,
                output: Sequence[int] = (), **sampling) -> executor_pb2.NewRequest:
    """Defaults: greedy (temperature 0) and schedule every not-yet-computed token."""
    sampling.setdefault("temperature", 0.0)
    if num_scheduled_tokens is None:
        num_scheduled_tokens = len(prompt) + len(output) - num_computed_tokens
    return executor_pb2.NewRequest(
        request_id=request_id, prompt_token_ids=list(prompt), output_token_ids=list(output),
        sampling=common_pb2.SamplingParams(**sampling), block_ids=list(block_ids),
        num_computed_tokens=num_computed_tokens, num_scheduled_tokens=num_scheduled_tokens)


def running(request_id: str, num_computed_tokens: int, num_scheduled_tokens: int = 1,
            new_block_ids: Sequence[int] = ()) -> executor_pb2.RunningRequest:
    return executor_pb2.RunningRequest(request_id=request_id, new_block_ids=list(new_block_ids),
                                       num_computed_tokens=num_computed_tokens,
                                       num_scheduled_tokens=num_scheduled_tokens)


def make_plan(step_id: int, new: Sequence = (), run: Sequence = (), finished: Sequence[str] = (),
              ) -> executor_pb2.StepPlan:
    """A plan whose num_scheduled_tokens is the true sum (tests corrupt it on purpose)."""
    total = sum(r.num_scheduled_tokens for r in new) + sum(r.num_scheduled_tokens for r in run)
    return executor_pb2.StepPlan(step_id=step_id, new_requests=list(new), running=list(run),
                                 finished_request_ids=list(finished), num_scheduled_tokens=total)


class SimpleDriver:
    """A minimal scheduler stand-in: every request computes all its pending tokens each step.

    Blocks are handed out in order from a counter (never reused); enough for tests and benches.
    Use: add(...) requests, then plan() -> send -> apply(result), repeatedly.
    """

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.next_block = 0
        self.step_id = 0
        self.pending_new: list[executor_pb2.NewRequest] = []
        self.num_tokens: dict[str, int] = {}      # known tokens per request
        self.num_computed: dict[str, int] = {}
        self.num_blocks: dict[str, int] = {}
        self.outputs: dict[str, list[int]] = {}

    def _blocks_for(self, request_id: str, num_tokens: int) -> list[int]:
        needed = -(-num_tokens // self.block_size) - self.num_blocks.get(request_id, 0)
        blocks = list(range(self.next_block, self.next_block + max(0, needed)))
        self.next_block += len(blocks)
        self.num_blocks[request_id] = self.num_blocks.get(request_id, 0) + len(blocks)
        return blocks

    def add(self, request_id: str, prompt: Sequence[int], **sampling) -> None:
        blocks = self._blocks_for(request_id, len(prompt))
        self.pending_new.append(new_request(request_id, prompt, blocks, **sampling))
        self.num_tokens[request_id], self.num_computed[request_id] = len(prompt), 0
        self.outputs[request_id] = []

    def plan(self, finished: Sequence[str] = ()) -> executor_pb2.StepPlan:
        self.step_id += 1
        new_ids = {r.request_id for r in self.pending_new}
        run = []
        for request_id, num_tokens in self.num_tokens.items():
            if request_id in new_ids or request_id in finished:
                continue
            computed = self.num_computed[request_id]
            run.append(running(request_id, computed, num_tokens - computed,
                               self._blocks_for(request_id, num_tokens)))
        plan = make_plan(self.step_id, self.pending_new, run, finished)
        for request_id in finished:
            for table in (self.num_tokens, self.num_computed, self.num_blocks):
                table.pop(request_id, None)
        self.pending_new = []
        for request_id in self.num_tokens:
            self.num_computed[request_id] = self.num_tokens[request_id]
        return plan

    def apply(self, result: executor_pb2.StepResult) -> None:
        for sampled in result.sampled:
            self.outputs[sampled.request_id].append(sampled.token_id)
            self.num_tokens[sampled.request_id] += 1
