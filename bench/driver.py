"""The load generator: drives strata.v1.Generation with asyncio gRPC and records every
streamed response's arrival time (bench.metrics.RequestTrace).

Sessions start at their arrival offsets; the turns of one session run one after another (turn
t+1 is sent when turn t's stream ends, with the returned ids appended to its prompt); sessions
run concurrently. With --turn-barrier (`run_turn_by_turn`) turn t of every session starts
together once every session's turn t-1 has ended, and each turn's wall time is recorded (what
an offline engine given one batch per turn is measured on). --max-concurrency caps the
requests in flight (a semaphore around each request, not each session), whichever sender
sends them: gRPC here, OpenAI HTTP in bench.openai_client. Requests are greedy
(temperature 0), `ignore_eos` with exact `max_tokens`, so every run of a workload sends the
same token ids.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

import grpc

from bench.metrics import RequestTrace
from bench.workloads import Session
from protos.v1 import common_pb2, generation_pb2, generation_pb2_grpc

ABORT = generation_pb2.FINISH_REASON_ABORT


@dataclass(slots=True)
class SentRequest:
    """One request as sent (for baselines that replay the same prompts) and what came back."""
    prompt_ids: list[int]
    max_tokens: int
    trace: RequestTrace
    output_ids: list[int] = field(default_factory=list)
    output_text: str = ""   # from a server that streams text, not ids (bench.openai_client)


@dataclass(slots=True)
class RunResult:
    sent: list[SentRequest]
    duration_s: float
    stats_before: generation_pb2.Stats | None
    stats_after: generation_pb2.Stats | None
    turn_wall_s: list[float] | None = None   # per turn index, when run turn by turn

    @property
    def traces(self) -> list[RequestTrace]:
        return [request.trace for request in self.sent]


def make_request(request_id: str, prompt_ids: list[int], max_tokens: int) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        request_id=request_id,
        tokens=generation_pb2.TokenIds(ids=prompt_ids),
        sampling=common_pb2.SamplingParams(temperature=0.0),
        stopping=generation_pb2.StoppingCriteria(max_tokens=max_tokens, ignore_eos=True))


async def get_stats(stub) -> generation_pb2.Stats | None:
    """The server's counters, or None when it does not serve GetStats (yet)."""
    try:
        return await stub.GetStats(generation_pb2.GetStatsRequest(), timeout=10)
    except grpc.aio.AioRpcError:
        return None


async def get_model_info(target: str) -> generation_pb2.ModelInfo:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        return await stub.GetModelInfo(generation_pb2.GetModelInfoRequest(), timeout=30)


class Sender(Protocol):
    """How one request goes to the server and comes back into its SentRequest."""

    async def send(self, request_id: str, request: SentRequest, timeout_s: float) -> None:
        """Set trace.send_time, record every response; trace.error on any failure (never raises)."""

    async def fill_output_ids(self, request: SentRequest) -> None:
        """request.output_ids complete (the next turn's history), called outside the
        concurrency cap on an ok request whose session has another turn."""


class GrpcSender:
    """strata.v1.Generation's Generate stream: the ids come in the responses."""

    def __init__(self, stub):
        self.stub = stub

    async def send(self, request_id: str, request: SentRequest, timeout_s: float) -> None:
        trace = request.trace
        message = make_request(request_id, request.prompt_ids, request.max_tokens)
        trace.send_time = time.perf_counter()
        try:
            async for response in self.stub.Generate(message, timeout=timeout_s):
                trace.response_times.append(time.perf_counter())
                trace.tokens_per_response.append(len(response.token_ids))
                request.output_ids.extend(response.token_ids)
                _apply_final(trace, response)
        except grpc.aio.AioRpcError as error:
            trace.error = f"{error.code().name}: {error.details()}"

    async def fill_output_ids(self, request: SentRequest) -> None:
        pass


class LoadGenerator:
    """One run of a workload against one server through `sender`. `on_request_done` is called
    once per request (the progress bar). `tag` makes request ids unique across runs."""

    def __init__(self, sender: Sender, max_concurrency: int | None, request_timeout_s: float,
                 on_request_done: Callable[[], None], tag: str):
        self.sender = sender
        self.limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self.request_timeout_s = request_timeout_s
        self.on_request_done = on_request_done
        self.tag = tag
        self.sent: list[SentRequest] = []
        self.turn_wall_s: list[float] | None = None

    async def run(self, sessions: list[Session], offsets: list[float]) -> float:
        """Run every session to its end; returns the wall time in seconds."""
        start = time.perf_counter()
        await asyncio.gather(*(self._session(i, s, start + o)
                               for i, (s, o) in enumerate(zip(sessions, offsets))))
        return time.perf_counter() - start

    async def run_turn_by_turn(self, sessions: list[Session]) -> float:
        """Run turn t of every session together, after all of turn t-1 ended; a session whose
        turn failed sends no more. Returns the wall time; each turn's is in self.turn_wall_s."""
        start = time.perf_counter()
        histories: list[list[int] | None] = [list(s.prefix_ids) for s in sessions]
        self.turn_wall_s = []
        for turn_index in range(max(len(s.turns) for s in sessions)):
            live = [i for i, s in enumerate(sessions) if turn_index < len(s.turns) and histories[i] is not None]
            turn_start = time.perf_counter()
            ended = await asyncio.gather(*(self._turn(i, sessions[i], turn_index, histories[i]) for i in live))
            self.turn_wall_s.append(time.perf_counter() - turn_start)
            for i, history in zip(live, ended):
                histories[i] = history
        return time.perf_counter() - start

    async def _session(self, index: int, session: Session, start_at: float) -> None:
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        history = list(session.prefix_ids)
        for turn_index in range(len(session.turns)):
            history = await self._turn(index, session, turn_index, history)
            if history is None:
                return

    async def _turn(self, index: int, session: Session, turn_index: int, history: list[int]) -> list[int] | None:
        """Send one turn; the history for the next turn, or None when this one failed (the
        session's remaining turns are then recorded as failed)."""
        turn = session.turns[turn_index]
        prompt = history + turn.user_ids
        request = SentRequest(prompt, turn.max_tokens, RequestTrace(0.0, num_prompt_tokens=len(prompt),
                                                                    turn=turn_index))
        self.sent.append(request)
        await self._send(f"bench-{self.tag}-{index}-{turn_index}", request)
        if request.trace.is_ok and turn_index + 1 < len(session.turns):
            await self.sender.fill_output_ids(request)
        self.on_request_done()
        if not request.trace.is_ok:
            self._fail_rest(session, turn_index + 1, request.trace.error)
            return None
        return prompt + request.output_ids

    def _fail_rest(self, session: Session, first_turn: int, reason: str | None) -> None:
        for turn_index in range(first_turn, len(session.turns)):
            trace = RequestTrace(0.0, turn=turn_index, error=f"earlier turn failed: {reason}")
            self.sent.append(SentRequest([], session.turns[turn_index].max_tokens, trace))
            self.on_request_done()

    async def _send(self, request_id: str, request: SentRequest) -> None:
        guard = self.limit if self.limit is not None else contextlib.nullcontext()
        async with guard:
            await self.sender.send(request_id, request, self.request_timeout_s)


def _apply_final(trace: RequestTrace, response: generation_pb2.GenerateResponse) -> None:
    if response.HasField("usage"):
        trace.num_cached_tokens = response.usage.cached_tokens
    if response.finish_reason == ABORT:
        trace.error = "server aborted the request (FINISH_REASON_ABORT)"


async def run_workload(target: str, drive: Callable[[LoadGenerator], Awaitable[float]],
                       max_concurrency: int | None, on_request_done: Callable[[], None],
                       tag: str = "run", request_timeout_s: float = 3600.0) -> RunResult:
    """Run one workload against the server at `target`, with GetStats before and after.
    `drive` runs it on the generator: e.g. `lambda g: g.run(sessions, offsets)`."""
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        stats_before = await get_stats(stub)
        generator = LoadGenerator(GrpcSender(stub), max_concurrency, request_timeout_s, on_request_done, tag)
        duration_s = await drive(generator)
        stats_after = await get_stats(stub)
    return RunResult(generator.sent, duration_s, stats_before, stats_after, generator.turn_wall_s)
