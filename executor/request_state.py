"""What the executor remembers about each request between steps, and checking a plan against it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from executor.errors import PlanError
from executor.sampling_params import Sampling, sampling_from_proto


@dataclass(slots=True)
class RequestState:
    request_id: str
    token_ids: list[int]  # prompt + outputs; the executor appends each token it samples
    num_prompt_tokens: int
    block_ids: list[int]
    num_computed_tokens: int
    sampling: Sampling

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]


# The longest a plan with no tokens may wait for a page move. Python's waits cannot take inf or
# more than threading.TIMEOUT_MAX (the step failed with OverflowError after it had run), and a
# long wait holds the one-plan-at-a-time lock, so Reset would wait as long.
MAX_WAIT_FOR_MOVES_S = 60.0


class Limits(NamedTuple):
    num_blocks: int
    block_size: int
    vocab_size: int
    max_model_len: int
    max_num_batched_tokens: int
    max_num_seqs: int


class PlannedRequest(NamedTuple):
    """One request of a validated plan: its state (new or held), blocks to append, tokens to run."""
    state: RequestState
    new_block_ids: list[int]
    num_scheduled_tokens: int


def check_plan(plan, requests: dict[str, RequestState], limits: Limits,
               arena_slots: dict[str, int]) -> list[PlannedRequest]:
    """Validate the whole plan against held state; change nothing; PlanError says what is wrong.

    Finishing an unknown request id is not an error (a no-op): aborts stay idempotent and a
    scheduler may finish requests of an executor that restarted under it.
    """
    remaining = set(requests) - set(plan.finished_request_ids)
    scheduled = [_check_new(new, remaining, limits) for new in plan.new_requests]
    seen = {item.state.request_id for item in scheduled}
    if len(seen) != len(scheduled):
        raise PlanError("a request id appears twice in new_requests")
    for running in plan.running:
        rid = running.request_id
        if rid not in remaining:
            raise PlanError(f"running request {rid!r} is unknown to the executor (never added, finished, "
                            "or forgotten by Reset): send it in new_requests")
        if rid in seen:
            raise PlanError(f"request {rid!r} appears twice in the plan (new_requests/running)")
        seen.add(rid)
        scheduled.append(_check_running(running, requests[rid], limits))
    _check_totals(plan, scheduled, limits)
    _check_moves(plan, limits, arena_slots)
    if not 0.0 <= plan.wait_for_moves_s <= MAX_WAIT_FOR_MOVES_S:
        raise PlanError(f"wait_for_moves_s is {plan.wait_for_moves_s}: must be 0 to "
                        f"{MAX_WAIT_FOR_MOVES_S:g} seconds (a poll interval, e.g. 0.05)")
    return scheduled


def _check_new(new, remaining: set[str], limits: Limits) -> PlannedRequest:
    rid = new.request_id
    if not rid:
        raise PlanError("a new request has an empty request_id")
    if rid in remaining:
        raise PlanError(f"new request {rid!r} is already held by the executor: send it in running, "
                        "or finish it first")
    if not new.prompt_token_ids:
        raise PlanError(f"new request {rid!r} has an empty prompt")
    token_ids = list(new.prompt_token_ids) + list(new.output_token_ids)
    bad = [t for t in token_ids if t >= limits.vocab_size]
    if bad:
        raise PlanError(f"request {rid!r}: token id {bad[0]} >= vocab size {limits.vocab_size}")
    state = RequestState(rid, token_ids, len(new.prompt_token_ids), [],
                         new.num_computed_tokens, sampling_from_proto(new.sampling, rid))
    _check_span(state, list(new.block_ids), new.num_scheduled_tokens, limits)
    return PlannedRequest(state, list(new.block_ids), new.num_scheduled_tokens)


def _check_running(running, state: RequestState, limits: Limits) -> PlannedRequest:
    if running.num_computed_tokens != state.num_computed_tokens:
        raise PlanError(f"request {state.request_id!r}: plan says {running.num_computed_tokens} computed "
                        f"tokens, the executor has {state.num_computed_tokens}")
    new_block_ids = list(running.new_block_ids)
    _check_span(state, new_block_ids, running.num_scheduled_tokens, limits)
    return PlannedRequest(state, new_block_ids, running.num_scheduled_tokens)


def _check_span(state: RequestState, new_block_ids: list[int], num_scheduled: int, limits: Limits) -> None:
    rid, end = state.request_id, state.num_computed_tokens + num_scheduled
    bad = [b for b in new_block_ids if b >= limits.num_blocks]
    if bad:
        raise PlanError(f"request {rid!r}: block id {bad[0]} out of range (the pool has "
                        f"{limits.num_blocks} blocks: 0..{limits.num_blocks - 1})")
    if end > len(state.token_ids):
        raise PlanError(f"request {rid!r}: computed {state.num_computed_tokens} + scheduled {num_scheduled} "
                        f"tokens exceed the {len(state.token_ids)} known tokens")
    if end > limits.max_model_len:
        raise PlanError(f"request {rid!r}: {end} tokens exceed max_model_len {limits.max_model_len}")
    num_blocks = len(state.block_ids) + len(new_block_ids)
    if num_blocks * limits.block_size < end:
        raise PlanError(f"request {rid!r}: {num_blocks} blocks hold {num_blocks * limits.block_size} "
                        f"tokens, {end} needed: append blocks")


def _check_totals(plan, scheduled: list[PlannedRequest], limits: Limits) -> None:
    total = sum(item.num_scheduled_tokens for item in scheduled)
    if total != plan.num_scheduled_tokens:
        raise PlanError(f"plan.num_scheduled_tokens is {plan.num_scheduled_tokens} but the requests "
                        f"schedule {total}")
    if total > limits.max_num_batched_tokens:
        raise PlanError(f"plan schedules {total} tokens, more than max_num_batched_tokens "
                        f"{limits.max_num_batched_tokens}")
    if len(scheduled) > limits.max_num_seqs:
        raise PlanError(f"plan holds {len(scheduled)} requests, more than max_num_seqs {limits.max_num_seqs}")


def _check_moves(plan, limits: Limits, arena_slots: dict[str, int]) -> None:
    """arena_slots: mapped arena id -> its number of slots."""
    move_ids = set()
    for kind, moves in (("loads", plan.loads), ("stores", plan.stores),
                        ("blocking_loads", plan.blocking_loads)):
        for move in moves:
            num_slots = arena_slots.get(move.arena_id)
            if num_slots is None:
                raise PlanError(f"{kind}: no host arena mapped with id {move.arena_id!r}: call "
                                "MapArena with the kvstore's arena first")
            if move.slot >= num_slots:
                raise PlanError(f"{kind}: slot {move.slot} out of range (arena {move.arena_id!r} "
                                f"has {num_slots} slots)")
            if move.block_id >= limits.num_blocks:
                raise PlanError(f"{kind}: block id {move.block_id} out of range (pool has "
                                f"{limits.num_blocks} blocks)")
            if move.move_id in move_ids:
                raise PlanError(f"{kind}: move_id {move.move_id} appears twice in one plan")
            move_ids.add(move.move_id)
