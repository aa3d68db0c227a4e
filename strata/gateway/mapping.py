"""OpenAI request fields -> GenerateRequest messages, one per choice (n fan-out).

What the proto cannot say is refused here with a 400 naming the field; the values themselves
(temperature >= 0, top_p in (0, 1] ...) are the scheduler's to check and come back as
INVALID_ARGUMENT -> 400.
"""
from __future__ import annotations

from typing import NamedTuple

from protos.v1 import common_pb2, generation_pb2
from strata.gateway.errors import bad_request
from strata.gateway.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields

DEFAULT_COMPLETION_MAX_TOKENS = 16   # OpenAI's default for /v1/completions


class Prompt(NamedTuple):
    """One prompt: text (tokenized by the scheduler) or token ids."""
    text: str | None = None
    token_ids: list[int] | None = None
    is_special_added: bool = True


def completion_prompts(body: CompletionRequest) -> list[Prompt]:
    """`prompt` as a text, a list of texts, token ids, or a list of token-id lists."""
    prompt = body.prompt
    if isinstance(prompt, str):
        return [Prompt(text=prompt, is_special_added=body.add_special_tokens)]
    if not prompt:
        raise bad_request("prompt is empty: give a text or token ids", "prompt")
    if all(isinstance(item, int) for item in prompt):
        return [Prompt(token_ids=list(prompt))]
    if all(isinstance(item, str) for item in prompt):
        return [Prompt(text=text, is_special_added=body.add_special_tokens) for text in prompt]
    return [Prompt(token_ids=list(ids)) for ids in prompt]


def sampling_params(body: SamplingFields, num_logprobs: int | None, seed: int | None) -> common_pb2.SamplingParams:
    sampling = common_pb2.SamplingParams(temperature=body.temperature, top_p=body.top_p,
                                         repetition_penalty=body.repetition_penalty, seed=seed,
                                         logprobs=num_logprobs)
    sampling.top_k = max(body.top_k or 0, 0)   # vLLM's -1 is the proto's 0: off
    sampling.min_p = body.min_p or 0.0
    sampling.presence_penalty = body.presence_penalty or 0.0
    sampling.frequency_penalty = body.frequency_penalty or 0.0
    return sampling


def stopping_criteria(body: SamplingFields, max_tokens: int | None) -> generation_pb2.StoppingCriteria:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return generation_pb2.StoppingCriteria(max_tokens=max_tokens, min_tokens=body.min_tokens, stop=stop,
                                           stop_token_ids=body.stop_token_ids or [],
                                           ignore_eos=body.ignore_eos)


def choice_seeds(body: SamplingFields) -> list[int | None]:
    """Choice i samples with seed + i, so n choices differ and a repeat gives the same n."""
    if body.seed is None:
        return [None] * body.n
    return [(body.seed + index) % 2**64 for index in range(body.n)]


def generate_requests(body: SamplingFields, prompt: Prompt, max_tokens: int | None,
                      num_logprobs: int | None) -> list[generation_pb2.GenerateRequest]:
    """The n GenerateRequests of one prompt. vLLM's priority sign (lower runs first) is the
    opposite of the proto's (higher runs first)."""
    requests = []
    for seed in choice_seeds(body):
        request = generation_pb2.GenerateRequest(
            sampling=sampling_params(body, num_logprobs, seed),
            stopping=stopping_criteria(body, max_tokens), priority=-body.priority,
            cache_salt=body.cache_salt or "")
        if prompt.token_ids is not None:
            request.tokens.ids.extend(prompt.token_ids)
        else:
            request.text = prompt.text
            request.add_special_tokens = prompt.is_special_added
        requests.append(request)
    return requests


def completion_max_tokens(body: CompletionRequest) -> int:
    return body.max_tokens if body.max_tokens is not None else DEFAULT_COMPLETION_MAX_TOKENS


def chat_max_tokens(body: ChatCompletionRequest, num_prompt_tokens: int, max_model_len: int) -> int:
    """max_completion_tokens, else the deprecated max_tokens, else what the model's length leaves."""
    if body.max_completion_tokens is not None:
        return body.max_completion_tokens
    if body.max_tokens is not None:
        return body.max_tokens
    return max(max_model_len - num_prompt_tokens, 1)


def chat_logprobs(body: ChatCompletionRequest) -> int | None:
    """logprobs: true -> the sampled token's; top_logprobs N -> also the N most likely."""
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    if not body.logprobs:
        return None
    return body.top_logprobs or 0
