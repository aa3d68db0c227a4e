"""The gateway's grpc.aio client of strata.v1.Generation, and the n-way fan-out of one request.

The channel belongs to the event loop it was made on: `Backend` is made in the app's lifespan.
With `api_key` every call sends `authorization: Bearer KEY` (the scheduler's --api-key-file or
$STRATA_API_KEY); with `ca_pem` the channel is TLS trusting that root (the scheduler's --tls-cert).
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

import grpc

from protos.v1 import generation_pb2, generation_pb2_grpc
from runtime.token import bearer_metadata
from strata.gateway.chat_template import ChatTemplate
from strata.gateway.errors import aborted, from_rpc_error
from strata.public_channel import secure_or_plain

UNARY_TIMEOUT_S = 30.0


class Backend:
    def __init__(self, address: str, api_key: str | None = None, ca_pem: bytes | None = None):
        self.channel = secure_or_plain(address, ca_pem, aio=True)
        self.metadata = bearer_metadata(api_key)
        self.stub = generation_pb2_grpc.GenerationStub(self.channel)
        self._model_info: generation_pb2.ModelInfo | None = None
        self._chat_template: ChatTemplate | None = None

    async def model_info(self) -> generation_pb2.ModelInfo:
        """Asked once (the scheduler serves one model for its lifetime), then cached."""
        if self._model_info is None:
            info = await self.unary(self.stub.GetModelInfo, generation_pb2.GetModelInfoRequest())
            self._chat_template = ChatTemplate(info.chat_template, info.bos_token, info.eos_token)
            self._model_info = info
        return self._model_info

    async def chat_template(self) -> ChatTemplate:
        await self.model_info()
        return self._chat_template

    async def tokenize(self, text: str, is_special_added: bool) -> list[int]:
        request = generation_pb2.TokenizeRequest(text=text, add_special_tokens=is_special_added)
        return list((await self.unary(self.stub.Tokenize, request)).ids)

    async def detokenize(self, ids: list[int]) -> generation_pb2.DetokenizeResponse:
        return await self.unary(self.stub.Detokenize, generation_pb2.DetokenizeRequest(ids=ids))

    async def stats(self) -> generation_pb2.Stats:
        return await self.unary(self.stub.GetStats, generation_pb2.GetStatsRequest())

    async def metrics_text(self) -> str:
        """The scheduler's and its kvstore's Prometheus text (GetMetrics)."""
        return (await self.unary(self.stub.GetMetrics, generation_pb2.GetMetricsRequest())).text

    async def unary(self, method, request):
        try:
            return await method(request, timeout=UNARY_TIMEOUT_S, metadata=self.metadata)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error

    def fan_out(self, requests: list[generation_pb2.GenerateRequest]) -> FanOut:
        return FanOut([self.stub.Generate(request, metadata=self.metadata) for request in requests])

    async def close(self) -> None:
        await self.channel.close()


class FanOut:
    """Concurrent Generate calls, their responses merged in arrival order as (choice index,
    response). Iterating raises ApiError for a failed call or an aborted generation; `cancel`
    (always called, also when the HTTP client went away) cancels every call still open, so the
    scheduler aborts those requests and frees their blocks."""

    def __init__(self, calls: list):
        self.calls = calls
        self.queue: asyncio.Queue = asyncio.Queue()
        self.tasks = [asyncio.create_task(self._pump(index, call)) for index, call in enumerate(calls)]

    async def _pump(self, index: int, call) -> None:
        try:
            async for response in call:
                await self.queue.put((index, response, None))
            await self.queue.put((index, None, None))
        except grpc.aio.AioRpcError as error:
            await self.queue.put((index, None, error))

    async def responses(self) -> AsyncIterator[tuple[int, generation_pb2.GenerateResponse]]:
        num_open = len(self.calls)
        while num_open:
            index, response, error = await self.queue.get()
            if error is not None:
                raise from_rpc_error(error)
            if response is None:
                num_open -= 1
                continue
            if response.finish_reason == generation_pb2.FINISH_REASON_ABORT:
                raise aborted()
            yield index, response

    def cancel(self) -> None:
        for call in self.calls:
            call.cancel()
        for task in self.tasks:
            task.cancel()


def check_finished(finish_reason: int) -> None:
    """A stream that ended without a finish reason did not finish: an error, as an abort."""
    if finish_reason == generation_pb2.FINISH_REASON_UNSPECIFIED:
        raise aborted()

