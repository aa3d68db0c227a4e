"""Generate responses -> one OpenAI response (collected) or its server-sent events (streamed),
for completions and chat alike (the endpoint's JSON comes from its shape)."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from protos.v1 import generation_pb2
from strata.gateway.backend import Backend, check_finished
from strata.gateway.errors import ApiError
from strata.gateway.shapes import FINISH_REASONS, usage_json
from strata.gateway.sse import DONE, event

Responses = AsyncIterator[tuple[int, generation_pb2.GenerateResponse]]


@dataclass(slots=True)
class Completion:
    """One HTTP request's context: choice i * n + j is prompt i's choice j."""
    shape: type
    model: str
    num_prompts: int
    num_choices_per_prompt: int
    num_logprobs: int | None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def num_choices(self) -> int:
        return self.num_prompts * self.num_choices_per_prompt

    def envelope(self, object_name: str, choices: list[dict]) -> dict:
        return {"id": self.shape.id_prefix + self.request_id, "object": object_name,
                "created": self.created, "model": self.model, "choices": choices}


@dataclass(slots=True)
class ChoiceState:
    texts: list[str] = field(default_factory=list)
    num_text_chars: int = 0
    # Only the responses that carry tokens, kept for their logprobs.
    token_responses: list[generation_pb2.GenerateResponse] = field(default_factory=list)
    num_chunks: int = 0
    finish_reason: int = generation_pb2.FINISH_REASON_UNSPECIFIED
    usage: generation_pb2.Usage | None = None

    def add(self, response: generation_pb2.GenerateResponse) -> None:
        self.texts.append(response.text)
        self.num_text_chars += len(response.text)
        if response.token_ids:
            self.token_responses.append(response)
        if response.finish_reason:
            self.finish_reason = response.finish_reason
            self.usage = response.usage


def usage_of(completion: Completion, states: list[ChoiceState]) -> dict:
    firsts = [states[p * completion.num_choices_per_prompt].usage for p in range(completion.num_prompts)]
    return usage_json(firsts, sum(state.usage.completion_tokens for state in states))


async def logprobs_of(backend: Backend, completion: Completion,
                      responses: list[generation_pb2.GenerateResponse], text_offset: int) -> dict | None:
    """The responses' logprobs in the endpoint's shape (one Detokenize for every id in them)."""
    if completion.num_logprobs is None:
        return None
    token_ids = [token_id for response in responses for token_id in response.token_ids]
    entries = [entry for response in responses for entry in response.logprobs]
    ids = sorted(set(token_ids) | {i for entry in entries for i in entry.top_token_ids})
    pieces = dict(zip(ids, (await backend.detokenize(ids)).pieces)) if ids else {}
    return completion.shape.logprobs(entries, token_ids, pieces, text_offset)


async def collect(backend: Backend, completion: Completion, responses: Responses,
                  cancel: Callable[[], None]) -> dict:
    """The whole response (raises ApiError: a failed call, an abort)."""
    states = [ChoiceState() for _ in range(completion.num_choices)]
    try:
        async for index, response in responses:
            states[index].add(response)
    finally:
        cancel()
    choices = []
    for index, state in enumerate(states):
        check_finished(state.finish_reason)
        logprobs = await logprobs_of(backend, completion, state.token_responses, 0) \
            if completion.num_logprobs is not None else None
        choices.append(completion.shape.choice(index, "".join(state.texts), logprobs,
                                               FINISH_REASONS[state.finish_reason]))
    body = completion.envelope(completion.shape.object_name, choices)
    body["usage"] = usage_of(completion, states)
    return body


async def stream(backend: Backend, completion: Completion, responses: Responses,
                 cancel: Callable[[], None], is_usage_included: bool) -> AsyncIterator[str]:
    """Server-sent events: a chunk per response that carries text or a finish, an error event
    instead of a normal end when a call fails or aborts, the usage chunk, [DONE]. Cancelled (the
    client went away): every call still open is cancelled."""
    states = [ChoiceState() for _ in range(completion.num_choices)]
    try:
        async for index, response in responses:
            chunk = await chunk_of(backend, completion, states[index], index, response)
            states[index].add(response)
            if chunk is not None:
                yield event(chunk)
        for state in states:
            check_finished(state.finish_reason)
        if is_usage_included:
            yield event(dict(completion.envelope(completion.shape.chunk_object_name, []),
                             usage=usage_of(completion, states)))
    except ApiError as error:
        yield event(error.body())
    finally:
        cancel()
    yield DONE


async def chunk_of(backend: Backend, completion: Completion, state: ChoiceState, index: int,
                   response: generation_pb2.GenerateResponse) -> dict | None:
    """None for a response with neither text nor a finish (text held back mid-character)."""
    finish_reason = FINISH_REASONS.get(response.finish_reason)
    logprobs = None
    if completion.num_logprobs is not None and response.token_ids:
        logprobs = await logprobs_of(backend, completion, [response], state.num_text_chars)
    if not response.text and finish_reason is None and logprobs is None:
        return None
    is_first = state.num_chunks == 0
    state.num_chunks += 1
    delta = completion.shape.delta(index, response.text, logprobs, finish_reason, is_first)
    return completion.envelope(completion.shape.chunk_object_name, [delta])
