"""The gRPC side of one request: a queue the engine fills and the handler drains.

The engine thread only puts RequestOutput values (token ids); the handler thread detokenizes
and matches stop strings, so text work stays off the engine loop and runs while the executor
computes the next step. When a stop string appears, the handler asks the engine to finish the
request (`on_stop_string`), drops the tokens the engine sampled meanwhile, and sends the final
STOP response once the engine has let go of the request: the client sees exactly what an
engine-side check would give (tokens up to the one that completed the stop string, the text cut
before it), and the request id is free again when it does.
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
    def __init__(self, request: Request, tokenizer: Tokenizer, on_stop_string: Callable[[], None]):
        """on_stop_string: called once, on the handler thread, when a stop string appeared before
        the engine finished the request; the engine then finishes it at its next step boundary."""
        self.request = request
        self.outputs: queue.SimpleQueue[RequestOutput] = queue.SimpleQueue()
        self.text_stream = TextStream(tokenizer, request.prompt_token_ids, request.stopping.stop)
        self.on_stop_string = on_stop_string
        self.num_output_tokens = 0

    @property
    def is_stop_string_found(self) -> bool:
        """Any thread: the handler found a stop string (the client's finish reason is STOP)."""
        return self.text_stream.is_stopped

    def put(self, output: RequestOutput) -> None:
        """Engine thread: hand over one output (thread-safe)."""
        self.outputs.put(output)

    def responses(self, is_active: Callable[[], bool]) -> Iterator[generation_pb2.GenerateResponse]:
        """Handler thread: one response per batch of queued outputs, until the final one or
        until is_active() turns False (the caller aborts the request then)."""
        while True:
            batch = self._next_batch(is_active)
            if batch is None:
                return
            response = self._tokens_response(batch)
            final = batch[-1] if batch[-1].is_final else None
            if final is None and self.text_stream.is_stopped:
                self.on_stop_string()
                final = self._final_output(is_active)
                if final is None:
                    return
            if final is None:
                response.text = self.text_stream.take()
                yield response
                continue
            self._finish(response, final)
            yield response
            return

    def _next_batch(self, is_active: Callable[[], bool]) -> list[RequestOutput] | None:
        """Every output queued now (at least one, waiting for it); None once the client is gone."""
        first = self._next_output(is_active)
        if first is None:
            return None
        batch = [first]
        while not batch[-1].is_final:
            try:
                batch.append(self.outputs.get_nowait())
            except queue.Empty:
                break
        return batch

    def _next_output(self, is_active: Callable[[], bool]) -> RequestOutput | None:
        while True:
            try:
                return self.outputs.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not is_active():
                    return None

    def _final_output(self, is_active: Callable[[], bool]) -> RequestOutput | None:
        """Skip what the engine sampled after the stop string, up to its final output."""
        while True:
            output = self._next_output(is_active)
            if output is None or output.is_final:
                return output

    def _tokens_response(self, batch: list[RequestOutput]) -> generation_pb2.GenerateResponse:
        """Token ids and logprobs of the batch, up to the token that completes a stop string."""
        response = generation_pb2.GenerateResponse(request_id=self.request.request_id)
        min_tokens = self.request.stopping.min_tokens
        for output in batch:
            for index, token_id in enumerate(output.token_ids):
                if self.text_stream.is_stopped:
                    return response
                self.num_output_tokens += 1
                response.token_ids.append(token_id)
                if output.logprobs:
                    response.logprobs.append(output.logprobs[index])
                # As EOS: stop strings count once min_tokens tokens exist.
                self.text_stream.push(token_id, self.num_output_tokens >= min_tokens)
        return response

    def _finish(self, response: generation_pb2.GenerateResponse, final: RequestOutput) -> None:
        # The finish reason is decided: the detokenizer's tail is not stop-checked any more.
        response.text = self.text_stream.take_final(is_stop_checked=False)
        usage = final.usage
        response.usage.prompt_tokens = usage.num_prompt_tokens
        response.usage.cached_tokens = usage.num_cached_tokens
        if self.text_stream.is_stopped:
            response.finish_reason = generation_pb2.FINISH_REASON_STOP
            response.usage.completion_tokens = self.num_output_tokens
        else:
            response.finish_reason = FINISH_REASONS[final.finish_reason]
            response.usage.completion_tokens = usage.num_completion_tokens
