"""A model-free executor for scheduler unit tests and overhead benchmarks.

It applies plans exactly as executor.proto defines them (full requests once, then diffs,
num_computed_tokens checked, one token sampled when a request reaches the end of its known
tokens) and "samples" a deterministic function of the request's tokens, so a test can predict
every output. Plan errors raise FakePlanError (the real executor answers INVALID_ARGUMENT).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from protos.v1 import executor_pb2


class FakePlanError(ValueError):
    pass


@dataclass(slots=True)
class FakeRequestState:
    token_ids: list[int]
    block_ids: list[int]
    num_computed_tokens: int


@dataclass(slots=True)
class FakeExecutor:
    vocab_size: int = 512
    block_size: int = 16
    num_blocks: int = 64
    requests: dict[str, FakeRequestState] = field(default_factory=dict)
    plans: list[executor_pb2.StepPlan] = field(default_factory=list)

    @staticmethod
    def next_token(token_ids: list[int], vocab_size: int) -> int:
        """The token the fake model predicts after token_ids."""
        return (token_ids[-1] * 7 + len(token_ids)) % vocab_size

    def step(self, plan: executor_pb2.StepPlan) -> executor_pb2.StepResult:
        self.plans.append(plan)
        for request_id in plan.finished_request_ids:
            self.requests.pop(request_id, None)
        total = 0
        scheduled = []
        for new in plan.new_requests:
            if new.request_id in self.requests:
                raise FakePlanError(f"request {new.request_id} sent in full twice")
            state = FakeRequestState(list(new.prompt_token_ids) + list(new.output_token_ids),
                                     list(new.block_ids), new.num_computed_tokens)
            self.requests[new.request_id] = state
            scheduled.append((new.request_id, state, new.num_scheduled_tokens))
        for diff in plan.running:
            state = self.requests.get(diff.request_id)
            if state is None or state.num_computed_tokens != diff.num_computed_tokens:
                raise FakePlanError(f"request {diff.request_id}: unknown or computed count mismatch")
            state.block_ids += diff.new_block_ids
            scheduled.append((diff.request_id, state, diff.num_scheduled_tokens))
        sampled = []
        for request_id, state, num_tokens in scheduled:
            total += num_tokens
            self._check(request_id, state, num_tokens)
            state.num_computed_tokens += num_tokens
            if state.num_computed_tokens == len(state.token_ids):
                token = self.next_token(state.token_ids, self.vocab_size)
                state.token_ids.append(token)
                sampled.append(executor_pb2.SampledToken(request_id=request_id, token_id=token))
        if total != plan.num_scheduled_tokens:
            raise FakePlanError(f"num_scheduled_tokens {plan.num_scheduled_tokens} != {total}")
        return executor_pb2.StepResult(step_id=plan.step_id, sampled=sampled)

    def _check(self, request_id: str, state: FakeRequestState, num_tokens: int) -> None:
        end = state.num_computed_tokens + num_tokens
        if end > len(state.token_ids):
            raise FakePlanError(f"request {request_id} scheduled past its known tokens")
        if len(state.block_ids) * self.block_size < end:
            raise FakePlanError(f"request {request_id} has too few blocks for {end} tokens")
        if any(not 0 <= b < self.num_blocks for b in state.block_ids):
            raise FakePlanError(f"request {request_id} has a block id out of range")
