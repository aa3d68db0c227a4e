"""What one step produced for one request, handed from the engine thread to its stream."""
from __future__ import annotations

from typing import NamedTuple

from protos.v1 import common_pb2
from scheduler.request import FinishReason, Request


class Usage(NamedTuple):
    num_prompt_tokens: int
    num_completion_tokens: int
    num_cached_tokens: int


class RequestOutput(NamedTuple):
    request_id: str
    token_ids: list[int]
    logprobs: list[common_pb2.TokenLogprobs]
    finish_reason: FinishReason | None
    usage: Usage | None

    @property
    def is_final(self) -> bool:
        return self.finish_reason is not None


def make_output(request: Request, token_ids: list[int],
                logprobs: list[common_pb2.TokenLogprobs]) -> RequestOutput:
    usage = None
    if request.finish_reason is not None:
        usage = Usage(request.num_prompt_tokens, len(request.output_token_ids),
                      request.num_cached_tokens or 0)
    return RequestOutput(request.request_id, token_ids, logprobs, request.finish_reason, usage)
