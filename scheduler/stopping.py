"""When a request is done: stop token ids, EOS, max_tokens, the model length.

Stop strings are text: the request's stream matches them on its handler thread
(scheduler/streams.py) and finishes the request through the engine's abort.
"""
from __future__ import annotations

from scheduler.request import FinishReason, Request


def check_stop(request: Request, eos_token_ids: frozenset[int], max_model_len: int) -> FinishReason | None:
    """Finish reason after the request's newest output token, or None to keep going.

    EOS and stop token ids count only once min_tokens tokens exist; the stop or EOS token
    itself stays in the output token ids.
    """
    stopping = request.stopping
    num_output_tokens = len(request.output_token_ids)
    if num_output_tokens >= stopping.min_tokens:
        token_id = request.output_token_ids[-1]
        if token_id in stopping.stop_token_ids:
            return FinishReason.STOP
        if not stopping.is_eos_ignored and token_id in eos_token_ids:
            return FinishReason.STOP
    if num_output_tokens >= stopping.max_tokens or len(request.token_ids) >= max_model_len:
        return FinishReason.LENGTH
    return None
