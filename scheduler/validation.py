"""GenerateRequest -> scheduler Request, or an InvalidArgument that says what to change."""
from __future__ import annotations

import math
from typing import NamedTuple

from tokenizers import Tokenizer

from protos.v1 import common_pb2, generation_pb2
from scheduler.block_pool import num_blocks_for
from scheduler.errors import InvalidArgument
from scheduler.request import StopCriteria

DEFAULT_MAX_TOKENS = 16
MAX_LOGPROBS = 20
# As vLLM and the OpenAI API: presence and frequency penalties in [-2, 2].
MIN_PENALTY, MAX_PENALTY = -2.0, 2.0
# Caps on what a request may ask the server to hold and scan. Stop strings are matched after
# every token over a window of (longest stop string - 1) + the new text, once per stop string,
# so these two bound that work per token (64 searches over < 256 + new characters); without
# them 4 requests with 30,000 stop strings each made an unrelated request 6.9x slower.
MAX_NUM_STOP_STRINGS = 64
MAX_STOP_STRING_CHARS = 256
MAX_REQUEST_ID_CHARS = 256
MAX_CACHE_SALT_CHARS = 256


class ModelLimits(NamedTuple):
    vocab_size: int
    max_model_len: int
    block_size: int
    num_blocks: int


def prompt_token_ids(request: generation_pb2.GenerateRequest, tokenizer: Tokenizer,
                     limits: ModelLimits) -> list[int]:
    kind = request.WhichOneof("input")
    if kind == "text":
        is_special_added = not request.HasField("add_special_tokens") or request.add_special_tokens
        ids = tokenizer.encode(request.text, add_special_tokens=is_special_added).ids if request.text else []
    elif kind == "tokens":
        ids = list(request.tokens.ids)
        check_token_ids("tokens.ids", ids, limits)
    else:
        raise InvalidArgument("the prompt is missing: set `text` or `tokens`")
    if not ids:
        raise InvalidArgument("the prompt is empty: give at least one character or token id")
    return ids


def check_token_ids(name: str, ids: list[int], limits: ModelLimits) -> None:
    for index, token_id in enumerate(ids):
        if token_id >= limits.vocab_size:
            raise InvalidArgument(f"{name}[{index}] = {token_id} is not a token of this "
                                  f"model: ids must be < vocab_size {limits.vocab_size}")


def check_sizes(request: generation_pb2.GenerateRequest) -> None:
    """The caps above, checked before any work is done on the request."""
    check_length("request_id", request.request_id, MAX_REQUEST_ID_CHARS)
    check_length("cache_salt", request.cache_salt, MAX_CACHE_SALT_CHARS)
    stop = request.stopping.stop
    if len(stop) > MAX_NUM_STOP_STRINGS:
        raise InvalidArgument(f"stopping.stop has {len(stop)} strings: at most "
                              f"{MAX_NUM_STOP_STRINGS}")
    for index, text in enumerate(stop):
        check_length(f"stopping.stop[{index}]", text, MAX_STOP_STRING_CHARS)


def check_length(name: str, text: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise InvalidArgument(f"{name} is {len(text)} characters long: at most {max_chars}")


def check_sampling(sampling: common_pb2.SamplingParams) -> None:
    """Every float finite (NaN and inf never pass) and in its documented range."""
    if sampling.HasField("temperature") and not 0 <= sampling.temperature < math.inf:
        raise InvalidArgument(f"sampling.temperature = {sampling.temperature}: must be >= 0 and "
                              "finite (0 is greedy)")
    if sampling.HasField("top_p") and not 0 < sampling.top_p <= 1:
        raise InvalidArgument(f"sampling.top_p = {sampling.top_p}: must be in (0, 1] (1 turns it off)")
    if sampling.top_k < 0:
        raise InvalidArgument(f"sampling.top_k = {sampling.top_k}: must be >= 0 (0 turns it off)")
    if not 0 <= sampling.min_p <= 1:
        raise InvalidArgument(f"sampling.min_p = {sampling.min_p}: must be in [0, 1] (0 turns it off)")
    if sampling.HasField("repetition_penalty") and not 0 < sampling.repetition_penalty < math.inf:
        raise InvalidArgument(f"sampling.repetition_penalty = {sampling.repetition_penalty}: "
                              "must be > 0 and finite (1 turns it off)")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(sampling, name)
        if not MIN_PENALTY <= value <= MAX_PENALTY:
            raise InvalidArgument(f"sampling.{name} = {value}: must be in [{MIN_PENALTY:g}, "
                                  f"{MAX_PENALTY:g}] (0 turns it off)")
    if sampling.HasField("logprobs") and sampling.logprobs > MAX_LOGPROBS:
        raise InvalidArgument(f"sampling.logprobs = {sampling.logprobs}: at most {MAX_LOGPROBS}")


def stop_criteria(request: generation_pb2.GenerateRequest, num_prompt_tokens: int,
                  limits: ModelLimits) -> StopCriteria:
    stopping = request.stopping
    max_tokens = stopping.max_tokens if stopping.HasField("max_tokens") else DEFAULT_MAX_TOKENS
    if max_tokens < 1:
        raise InvalidArgument("stopping.max_tokens = 0: must be >= 1 (leave it unset for 16)")
    if num_prompt_tokens + max_tokens > limits.max_model_len:
        raise InvalidArgument(
            f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) = "
            f"{num_prompt_tokens + max_tokens} exceeds the model's max length "
            f"{limits.max_model_len}: shorten the prompt or lower max_tokens")
    num_blocks = num_blocks_for(num_prompt_tokens + max_tokens, limits.block_size)
    if num_blocks > limits.num_blocks:
        raise InvalidArgument(
            f"prompt + max_tokens needs {num_blocks} KV blocks but the server has "
            f"{limits.num_blocks}: shorten the prompt or lower max_tokens")
    if stopping.min_tokens > max_tokens:
        raise InvalidArgument(f"stopping.min_tokens = {stopping.min_tokens} exceeds max_tokens "
                              f"{max_tokens}: lower min_tokens")
    if any(not s for s in stopping.stop):
        raise InvalidArgument("stopping.stop contains an empty string: remove it")
    if any(i >= limits.vocab_size for i in stopping.stop_token_ids):
        raise InvalidArgument(f"stopping.stop_token_ids must be < vocab_size {limits.vocab_size}")
    return StopCriteria(max_tokens=max_tokens, min_tokens=stopping.min_tokens,
                        stop=tuple(stopping.stop), stop_token_ids=frozenset(stopping.stop_token_ids),
                        is_eos_ignored=stopping.ignore_eos)
