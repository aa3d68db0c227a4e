"""A streamed OpenAI completion, byte by byte: server-sent events -> `data:` payloads -> the
RequestTrace the gRPC driver records (bench.metrics), so both backends are measured alike.

    HTTP body: data: {chunk}\\n\\n data: {chunk}\\n\\n ... data: {usage}\\n\\n data: [DONE]\\n\\n
    trace:     one response per JSON event; its tokens = len(token_ids) when the server sends
               them (vLLM's return_token_ids), else 1 for a chunk with text, 0 without

A chunk can carry several tokens' text (a server holds text back mid-character), so at the end
usage.completion_tokens is the output count: the difference goes to the first token-carrying
response, where bench.metrics gives extra tokens no ITL value (no gap was observable).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from bench.driver import SentRequest

DONE = "[DONE]"
FINISH_REASONS = (None, "stop", "length")


class StreamError(Exception):
    """The request failed: an HTTP error, an error event (OpenAI's {"error": {...}} or vLLM's
    {"object": "error", ...}), a finish it could not complete, a stream cut short."""


class SseParser:
    """Bytes as they arrive (split anywhere, even inside a line or a character) -> the data of
    each complete event; several `data:` lines of one event are joined with newlines, comments
    and other fields are ignored (the text/event-stream rules)."""

    def __init__(self):
        self.buffer = b""
        self.data_lines: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self.buffer += chunk
        payloads = []
        while (end := self.buffer.find(b"\n")) >= 0:
            line, self.buffer = self.buffer[:end].rstrip(b"\r"), self.buffer[end + 1:]
            payload = self._line(line.decode("utf-8", errors="replace"))
            if payload is not None:
                payloads.append(payload)
        return payloads

    def _line(self, line: str) -> str | None:
        if not line:   # a blank line ends the event
            payload = "\n".join(self.data_lines) if self.data_lines else None
            self.data_lines = []
            return payload
        name, _, value = line.partition(":")
        if name == "data":
            self.data_lines.append(value[1:] if value.startswith(" ") else value)
        return None


def error_message(body: object) -> str:
    """OpenAI's {"error": {"message": ...}} (or vLLM's {"message": ...}), else the body itself."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(body)[:500]


@dataclass(slots=True)
class CompletionStream:
    """One request's stream so far."""
    request: SentRequest
    texts: list[str] = field(default_factory=list)
    num_completion_tokens: int | None = None
    is_done: bool = False

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def apply(self, payload: str, now: float) -> None:
        """One event's data (arrived at `now`); raises StreamError for an error event."""
        if payload == DONE:
            self.is_done = True
            return
        try:
            body = json.loads(payload)
        except json.JSONDecodeError as error:
            raise StreamError(f"event is not JSON ({error}): {payload[:200]!r}") from None
        if not isinstance(body, dict) or "error" in body or body.get("object") == "error":
            raise StreamError(error_message(body))
        trace = self.request.trace
        trace.response_times.append(now)
        trace.tokens_per_response.append(sum(self._choice(c) for c in body.get("choices") or []))
        usage = body.get("usage")
        if usage:
            self.num_completion_tokens = usage.get("completion_tokens")
            trace.num_cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0

    def _choice(self, choice: dict) -> int:
        """The choice's tokens; its ids go to output_ids when the server sends them."""
        if choice.get("finish_reason") not in FINISH_REASONS:
            raise StreamError(f"finish_reason {choice['finish_reason']!r}")
        text, ids = choice.get("text") or "", choice.get("token_ids") or []
        self.texts.append(text)
        self.request.output_ids.extend(ids)
        return len(ids) if ids else int(bool(text))

    def finish(self) -> None:
        """After the body ended: raises StreamError without [DONE]; settles the token count."""
        if not self.is_done:
            raise StreamError("the stream ended before data: [DONE]")
        trace = self.request.trace
        if self.num_completion_tokens is None or not trace.tokens_per_response:
            return
        counts = trace.tokens_per_response
        first = next((i for i, k in enumerate(counts) if k > 0), len(counts) - 1)
        counts[first] = max(0, counts[first] + self.num_completion_tokens - sum(counts))
