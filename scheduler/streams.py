"""The gRPC side of one request: a queue the engine fills and the handler drains.

The engine thread only puts RequestOutput values; the handler thread turns them into
GenerateResponse messages, detokenizing there unless the scheduler already had to (stop
strings), so text work stays off the engine loop.
"""
from __future__ import annotations

import queue
from typing import Callable, Iterator

from tokenizers import Tokenizer

from protos.v1 import generation_pb2
from scheduler.detokenizer import TextStream
from scheduler.outputs import RequestOutput
from scheduler.request import FinishReason, Request

FINISH_REASONS = {
    FinishReason.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP: generation_pb2.FINISH_REASON_STOP,
    FinishReason.ABORT: generation_pb2.FINISH_REASON_ABORT,
}
# How often a waiting handler checks that its client is still there.
POLL_SECONDS = 0.1


class RequestStream:
    def __init__(self, request: Request, tokenizer: Tokenizer):
        self.request = request
        self.outputs: queue.SimpleQueue[RequestOutput] = queue.SimpleQueue()
        self.text_stream = None
        if request.text_stream is None:
            self.text_stream = TextStream(tokenizer, request.prompt_token_ids)

    def put(self, output: RequestOutput) -> None:
        """Engine thread: hand over one output (thread-safe)."""
        self.outputs.put(output)

    def responses(self, is_active: Callable[[], bool]) -> Iterator[generation_pb2.GenerateResponse]:
        """Handler thread: one response per batch of queued outputs, until the final one or
        until is_active() turns False (the caller aborts the request then)."""
        while True:
            try:
                batch = [self.outputs.get(timeout=POLL_SECONDS)]
            except queue.Empty:
                if not is_active():
                    return
                continue
            while not batch[-1].is_final:
                try:
                    batch.append(self.outputs.get_nowait())
                except queue.Empty:
                    break
            yield self._response(batch)
            if batch[-1].is_final:
                return

    def _response(self, batch: list[RequestOutput]) -> generation_pb2.GenerateResponse:
        response = generation_pb2.GenerateResponse(request_id=self.request.request_id)
        texts = []
        for output in batch:
            response.token_ids.extend(output.token_ids)
            response.logprobs.extend(output.logprobs)
            texts.append(self._text(output))
        response.text = "".join(texts)
        final = batch[-1]
        if final.is_final:
            response.finish_reason = FINISH_REASONS[final.finish_reason]
            usage = final.usage
            response.usage.prompt_tokens = usage.num_prompt_tokens
            response.usage.completion_tokens = usage.num_completion_tokens
            response.usage.cached_tokens = usage.num_cached_tokens
        return response

    def _text(self, output: RequestOutput) -> str:
        if self.text_stream is None:
            return output.text or ""
        for token_id in output.token_ids:
            self.text_stream.push(token_id, is_stop_checked=False)
        return self.text_stream.take_final() if output.is_final else self.text_stream.take()
