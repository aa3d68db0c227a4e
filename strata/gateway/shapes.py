"""The JSON objects of /v1/completions and /v1/chat/completions: one shape per endpoint, so the
collecting and streaming code (completions.py) is the same for both."""
from __future__ import annotations

from protos.v1 import common_pb2, generation_pb2

FINISH_REASONS = {generation_pb2.FINISH_REASON_LENGTH: "length",
                  generation_pb2.FINISH_REASON_STOP: "stop"}


class CompletionShape:
    object_name, chunk_object_name, id_prefix = "text_completion", "text_completion", "cmpl-"

    @staticmethod
    def choice(index: int, text: str, logprobs: dict | None, finish_reason: str | None) -> dict:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    @staticmethod
    def delta(index: int, text: str, logprobs: dict | None, finish_reason: str | None,
              is_first: bool) -> dict:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    @staticmethod
    def logprobs(entries: list[common_pb2.TokenLogprobs], token_ids: list[int], pieces: dict[int, str],
                 text_offset: int) -> dict:
        """OpenAI's legacy form: parallel lists, top_logprobs as {token text: logprob}."""
        tokens = [pieces[token_id] for token_id in token_ids]
        offsets, offset = [], text_offset
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return {"tokens": tokens, "token_logprobs": [entry.logprob for entry in entries],
                "top_logprobs": [{pieces[i]: lp for i, lp in zip(entry.top_token_ids, entry.top_logprobs)}
                                 for entry in entries],
                "text_offset": offsets}


class ChatShape:
    object_name, chunk_object_name, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl-"

    @staticmethod
    def choice(index: int, text: str, logprobs: dict | None, finish_reason: str | None) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": text},
                "logprobs": logprobs, "finish_reason": finish_reason}

    @staticmethod
    def delta(index: int, text: str, logprobs: dict | None, finish_reason: str | None,
              is_first: bool) -> dict:
        delta = {"role": "assistant", "content": text} if is_first else {"content": text}
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}

    @staticmethod
    def logprobs(entries: list[common_pb2.TokenLogprobs], token_ids: list[int], pieces: dict[int, str],
                 text_offset: int) -> dict:
        def item(token_id: int, logprob: float) -> dict:
            token = pieces[token_id]
            return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

        return {"content": [
            dict(item(token_id, entry.logprob),
                 top_logprobs=[item(i, lp) for i, lp in zip(entry.top_token_ids, entry.top_logprobs)])
            for token_id, entry in zip(token_ids, entries)]}


def usage_json(prompt_usages: list[generation_pb2.Usage], num_completion_tokens: int) -> dict:
    """One Usage per prompt (its first choice's: n choices share one prompt) and every choice's
    completion tokens."""
    num_prompt_tokens = sum(usage.prompt_tokens for usage in prompt_usages)
    return {"prompt_tokens": num_prompt_tokens, "completion_tokens": num_completion_tokens,
            "total_tokens": num_prompt_tokens + num_completion_tokens,
            "prompt_tokens_details": {"cached_tokens": sum(u.cached_tokens for u in prompt_usages)}}
