"""strata.v1.Executor over gRPC: each RPC is a few lines around the Runner.

PlanError (INVALID_ARGUMENT, state untouched) and ArenaError (FAILED_PRECONDITION) are runtime
StatusErrors: the runtime's interceptor maps them; anything else is INTERNAL, logged."""
from __future__ import annotations

import threading

import grpc

from executor.runner import Runner
from protos.v1 import executor_pb2, executor_pb2_grpc
from runtime.errors import StatusError


class ExecutorService(executor_pb2_grpc.ExecutorServicer):
    """The runner arrives once the model is loaded; until then every RPC is UNAVAILABLE."""

    def __init__(self):
        self.runner: Runner | None = None
        self.lock = threading.Lock()  # one plan at a time: a step is a function of the last state

    def _ready_runner(self) -> Runner:
        if self.runner is None:
            raise StatusError("the executor is still loading its model; retry", grpc.StatusCode.UNAVAILABLE)
        return self.runner

    def Describe(self, request, context):
        return describe(self._ready_runner())

    def Step(self, request, context):
        runner = self._ready_runner()
        with self.lock:
            return runner.step(request).result

    def Reset(self, request, context):
        runner = self._ready_runner()
        with self.lock:
            num_drained = runner.reset()
        return executor_pb2.ResetResponse(num_drained_moves=num_drained)

    def MapArena(self, request, context):
        runner = self._ready_runner()
        with self.lock:
            is_pinned = runner.mover.map_arena(request.arena_id, request.arena_path,
                                               request.slot_bytes, request.num_slots)
        return executor_pb2.MapArenaResponse(is_pinned=is_pinned)


def describe(runner: Runner) -> executor_pb2.DescribeResponse:
    loaded, pool, config = runner.loaded, runner.pool, runner.loaded.config
    device = str(loaded.device) if loaded.device.type == "cpu" else f"cuda:{loaded.device.index or 0}"
    return executor_pb2.DescribeResponse(
        model_id=loaded.model_id, architecture=config.architecture, model_path=str(loaded.path),
        dtype=str(loaded.dtype).removeprefix("torch."), kv_dtype=str(pool.dtype).removeprefix("torch."),
        device=device, block_size=pool.block_size, num_blocks=pool.num_blocks,
        page_bytes=pool.page_bytes, num_layers=config.num_layers, num_kv_heads=config.num_kv_heads,
        head_dim=config.head_dim, vocab_size=config.vocab_size, max_model_len=config.max_model_len,
        max_num_batched_tokens=runner.limits.max_num_batched_tokens,
        max_num_seqs=runner.limits.max_num_seqs, eos_token_ids=config.eos_token_ids)
