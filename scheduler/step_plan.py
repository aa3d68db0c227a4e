"""Build the StepPlan proto: new requests in full, running ones as diffs (new block ids), and the
host tiers' page moves."""
from __future__ import annotations

from typing import NamedTuple

from protos.v1 import executor_pb2
from scheduler.host_tiers import PageMoves
from scheduler.request import Request


class ScheduledRequest(NamedTuple):
    request: Request
    num_tokens: int


class Step(NamedTuple):
    plan: executor_pb2.StepPlan
    scheduled: list[ScheduledRequest]


def build_plan(step_id: int, scheduled: list[ScheduledRequest], finished_request_ids: list[str],
               moves: PageMoves) -> executor_pb2.StepPlan:
    """Marks each scheduled request as known to the executor and its blocks as sent."""
    new_requests, running = [], []
    num_scheduled_tokens = 0
    for request, num_tokens in scheduled:
        num_scheduled_tokens += num_tokens
        if request.is_known_to_executor:
            running.append(executor_pb2.RunningRequest(
                request_id=request.request_id,
                new_block_ids=request.block_ids[request.num_blocks_sent:],
                num_computed_tokens=request.num_computed_tokens,
                num_scheduled_tokens=num_tokens))
        else:
            new_requests.append(executor_pb2.NewRequest(
                request_id=request.request_id,
                prompt_token_ids=request.prompt_token_ids,
                output_token_ids=request.output_token_ids,
                sampling=request.sampling,
                block_ids=request.block_ids,
                num_computed_tokens=request.num_computed_tokens,
                num_scheduled_tokens=num_tokens))
            request.is_known_to_executor = True
        request.num_blocks_sent = len(request.block_ids)
    return executor_pb2.StepPlan(
        step_id=step_id, finished_request_ids=finished_request_ids, new_requests=new_requests,
        running=running, num_scheduled_tokens=num_scheduled_tokens, loads=moves.loads,
        stores=moves.stores, blocking_loads=moves.blocking_loads,
        wait_for_moves_s=moves.wait_for_moves_s)
