"""The scheduler's connection to the executor: connect with retry, Describe, Reset, Step; every
call presents the internal token (the executor refuses calls without it)."""
from __future__ import annotations

import logging
import time

import grpc

from protos.v1 import executor_pb2, executor_pb2_grpc
from runtime.kvstore_client import ArenaLayout
from runtime.listen import MESSAGE_OPTIONS, RECONNECT_OPTIONS
from runtime.token import with_token

log = logging.getLogger(__name__)


# Its own subchannel: a channel opened again gets a new connection attempt, never one shared
# through grpc's global pool with the channel it replaces.
CHANNEL_OPTIONS = MESSAGE_OPTIONS + RECONNECT_OPTIONS + [("grpc.use_local_subchannel_pool", 1)]
# How often an executor that answers "still loading" is asked again.
LOADING_POLL_S = 0.2


class ExecutorLink:
    def __init__(self, target: str, token: str | None = None):
        self.target = target
        self.token = token
        self._open()

    def _open(self) -> None:
        """A new channel and stub in place of the old ones, which are then closed."""
        old = getattr(self, "channel", None)
        channel = grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self.channel, self.stub = channel, executor_pb2_grpc.ExecutorStub(with_token(channel, self.token))
        if old is not None:
            old.close()

    def wait_until_ready(self, is_stopping=lambda: False, max_backoff_s: float = 5.0) -> bool:
        """Block until the executor answers (logging each retry); False if asked to stop.
        A channel that did not connect within the backoff is closed and opened again: one
        whose executor was killed (then started again on the same socket) has been seen to
        stay unconnected for minutes while a new channel connected at once."""
        backoff, next_log = 0.2, 0.0
        while not is_stopping():
            ready = grpc.channel_ready_future(self.channel)
            try:
                ready.result(timeout=backoff)
                self.stub.Describe(executor_pb2.DescribeRequest(), timeout=30)
                return True
            except grpc.FutureTimeoutError:
                log.warning("executor at %s is not reachable yet; retrying in %.1fs",
                            self.target, backoff)
                ready.cancel()
                self._open()
            except grpc.RpcError as error:   # it answers, but not yet (loading) or not us (token)
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    # Loading its model: asking again is one local RPC, so ask every
                    # LOADING_POLL_S (a doubling wait lost up to 5 s of start-up once it was
                    # ready) and say so every few seconds.
                    now = time.monotonic()
                    if now >= next_log:
                        log.warning("executor at %s answered %s: %s; asking again every %.1fs", self.target,
                                    error.code().name, error.details(), LOADING_POLL_S)
                        next_log = now + max_backoff_s
                    time.sleep(LOADING_POLL_S)
                    continue
                log.warning("executor at %s answered %s: %s; retrying in %.1fs", self.target,
                            error.code().name, error.details(), backoff)
                time.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
        return False

    def describe(self) -> executor_pb2.DescribeResponse:
        return self.stub.Describe(executor_pb2.DescribeRequest(), timeout=30)

    def reset(self) -> None:
        self.stub.Reset(executor_pb2.ResetRequest(), timeout=30)

    def map_arena(self, layout: ArenaLayout) -> bool:
        """Ask the executor to map a kvstore arena; False (logged) on failure."""
        try:
            self.stub.MapArena(executor_pb2.MapArenaRequest(
                arena_id=layout.arena_id, arena_path=layout.arena_path,
                slot_bytes=layout.slot_bytes, num_slots=layout.num_slots), timeout=30)
            return True
        except grpc.RpcError as error:
            log.error("executor cannot map kvstore arena %s: %s", layout.arena_path, error.details())
            return False

    def step(self, plan: executor_pb2.StepPlan) -> executor_pb2.StepResult:
        return self.stub.Step(plan)

    def close(self) -> None:
        self.channel.close()
