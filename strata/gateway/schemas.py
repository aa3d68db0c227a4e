"""Request bodies of the OpenAI endpoints (and vLLM's extensions), as pydantic models.

Unknown fields are refused (extra="forbid"): a client that asks for something the server cannot
do (logit_bias, tools, echo ...) gets a 400 naming the field, not a silently different answer.
Ranges the wire cannot carry (negative counts into uint32) are checked here; everything else is
the scheduler's to check, so the rules live in one place.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_UINT32 = 2**32 - 1
MAX_CHOICES = 64   # n: each choice is one request in the scheduler
TokenId = Annotated[int, Field(ge=0, le=MAX_UINT32)]
Count = Annotated[int, Field(ge=0, le=MAX_UINT32)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(Strict):
    include_usage: bool = False


class SamplingFields(Strict):
    """The fields completions and chat share."""

    model: str | None = None
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = None
    top_k: int | None = Field(None, ge=-1)   # vLLM: -1 (or 0) turns it off
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = Field(None, ge=0, lt=2**64)
    stop: str | list[str] | None = None
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: bool = False
    min_tokens: Count = 0
    max_tokens: Count | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    priority: int = Field(0, ge=-2**31 + 1, le=2**31 - 1)   # vLLM's sign: lower runs first
    stream: bool = False
    stream_options: StreamOptions | None = None
    cache_salt: str | None = None
    user: str | None = None   # accepted and ignored, as by vLLM


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    logprobs: int | None = Field(None, ge=0)
    add_special_tokens: bool = True


class ChatMessage(BaseModel):
    # Extra fields (name, tool_call_id ...) go to the template as they are.
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict] | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Count | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)
    add_generation_prompt: bool = True


class TokenizeCompletion(Strict):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True


class TokenizeChat(Strict):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True


class DetokenizeRequest(Strict):
    model: str | None = None
    tokens: list[TokenId]


