"""Executor page moves through a real shared-memory arena: bytes round-trip, a prefix computed
once and loaded into other blocks gives the same next token, and bad moves are rejected."""
import os

import pytest
import torch

from bench.step_plans import make_plan, new_request
from executor.settings import RunnerSettings, build_runner
from executor.errors import ArenaError, PlanError
from kvstore.arena import Arena, align_up
from protos.v1 import executor_pb2
from runtime.arenas import arena_file_name, new_arena_tag

BLOCK = 4


def arena_path(directory, page_bytes: int) -> str:
    """Where and how the kvstore names an arena: MapArena maps nothing else."""
    return str(directory / arena_file_name(new_arena_tag(os.getpid()), page_bytes))


@pytest.fixture
def runner(llama_dir, tmp_path):
    runner = build_runner(RunnerSettings(llama_dir, dtype="float32", num_device_blocks=16, block_size=BLOCK,
                                         max_num_seqs=4, max_num_batched_tokens=64, arena_dir=str(tmp_path)))
    yield runner
    runner.mover.close()


@pytest.fixture
def arena(runner, tmp_path):
    arena = Arena.create(arena_path(tmp_path, runner.pool.page_bytes), align_up(runner.pool.page_bytes), 8)
    runner.mover.map_arena("ram0", arena.path, arena.slot_bytes, arena.num_slots)
    yield arena
    arena.close()


def move(move_id: int, block_id: int, slot: int) -> executor_pb2.PageMove:
    return executor_pb2.PageMove(move_id=move_id, block_id=block_id, slot=slot, arena_id="ram0")


def finish_moves(runner, step_id: int, move_ids: set[int]) -> None:
    """Poll with empty plans until every move in move_ids is reported done."""
    pending = set(move_ids)
    for _ in range(100):
        result = runner.step(executor_pb2.StepPlan(step_id=step_id, wait_for_moves_s=0.2)).result
        assert not result.failed_moves
        pending -= set(result.done_moves)
        if not pending:
            return
    raise AssertionError(f"moves {pending} never finished")


def test_store_then_load_round_trips_bytes(runner, arena):
    runner.pool.tensor.copy_(torch.randn(runner.pool.tensor.shape))
    page = runner.pool.tensor[5].clone()
    runner.step(executor_pb2.StepPlan(step_id=1, stores=[move(1, 5, 2)]))
    finish_moves(runner, 2, {1})
    assert bytes(arena.page(2, runner.pool.page_bytes)) == page.numpy().tobytes()
    runner.step(executor_pb2.StepPlan(step_id=3, loads=[move(2, 11, 2)]))
    finish_moves(runner, 4, {2})
    assert torch.equal(runner.pool.tensor[11], page)


def test_loaded_prefix_gives_the_same_token_as_computing_it(runner, arena):
    prompt = [7, 3, 9, 4, 11, 2, 8, 5, 6]          # two full blocks + 1 token
    first = runner.step(make_plan(1, [new_request("a", prompt, [0, 1, 2])])).result.sampled[0]
    runner.step(executor_pb2.StepPlan(step_id=2, stores=[move(1, 0, 0), move(2, 1, 1)],
                                      finished_request_ids=["a"]))
    finish_moves(runner, 3, {1, 2})
    runner.pool.tensor[:3].zero_()               # the device copy is gone
    runner.step(executor_pb2.StepPlan(step_id=4, loads=[move(3, 6, 0), move(4, 9, 1)]))
    finish_moves(runner, 5, {3, 4})
    second = runner.step(make_plan(6, [new_request("b", prompt, [6, 9, 12], num_computed_tokens=8)]))
    assert second.result.sampled[0].token_id == first.token_id


@pytest.mark.parametrize("plan, message", [
    (executor_pb2.StepPlan(step_id=1, loads=[move(1, 0, 8)]), "slot 8 out of range"),
    (executor_pb2.StepPlan(step_id=1, stores=[move(1, 16, 0)]), "block id 16 out of range"),
    (executor_pb2.StepPlan(step_id=1, loads=[move(1, 0, 0)], stores=[move(1, 1, 1)]), "appears twice"),
    (executor_pb2.StepPlan(step_id=1, stores=[executor_pb2.PageMove(block_id=0, slot=0, arena_id="x")]),
     "no host arena mapped with id 'x'"),
])
def test_bad_moves_are_rejected(runner, arena, plan, message):
    with pytest.raises(PlanError, match=message):
        runner.step(plan)
    assert not runner.mover.in_flight


def test_reset_drains_moves_and_forgets_their_reports(runner, arena):
    runner.step(executor_pb2.StepPlan(step_id=1, stores=[move(1, 0, 0), move(2, 1, 1)]))
    assert runner.reset() == 2
    result = runner.step(executor_pb2.StepPlan(step_id=2)).result
    assert not result.done_moves and not runner.mover.in_flight


def test_bad_arena_mappings(runner, tmp_path):
    with pytest.raises(ArenaError, match="cannot open arena"):
        runner.mover.map_arena("ram0", arena_path(tmp_path, 1 << 20), 1 << 20, 4)
    small = Arena.create(arena_path(tmp_path, 4096), 4096, 2)
    with pytest.raises(PlanError, match="cannot hold pages"):
        runner.mover.map_arena("ram0", small.path, runner.pool.page_bytes - 1, 2)
    with pytest.raises(PlanError, match="fewer than slot_bytes x num_slots"):
        runner.mover.map_arena("ram0", small.path, align_up(runner.pool.page_bytes), 64)
    small.close()


def test_blocking_loads_land_before_the_forward_of_the_same_step(runner, arena):
    prompt = [7, 3, 9, 4, 11, 2, 8, 5, 6]
    first = runner.step(make_plan(1, [new_request("a", prompt, [0, 1, 2])])).result.sampled[0]
    runner.step(executor_pb2.StepPlan(step_id=2, stores=[move(1, 0, 0), move(2, 1, 1)],
                                      finished_request_ids=["a"]))
    finish_moves(runner, 3, {1, 2})
    runner.pool.tensor[:3].zero_()
    plan = make_plan(4, [new_request("b", prompt, [6, 9, 12], num_computed_tokens=8)])
    plan.blocking_loads.extend([move(3, 6, 0), move(4, 9, 1)])
    result = runner.step(plan).result
    assert result.sampled[0].token_id == first.token_id
    assert sorted(result.done_moves) == [3, 4]
