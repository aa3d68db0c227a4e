"""Token ids -> text, incrementally, with stop strings cut from the text.

Byte-level BPE splits multi-byte UTF-8 characters across tokens, so decoding one token at a
time would emit U+FFFD halves. `IncrementalDetokenizer` re-decodes a short window instead:

    token_ids:  ... | prefix_offset ...... read_offset ...... end
                      `-- already emitted --'`-- new tokens --'
    delta = decode(prefix_offset:end)[len(decode(prefix_offset:read_offset)):]

and holds the delta back while it ends in U+FFFD (an incomplete character). Decoding from
prefix_offset (not read_offset) keeps tokenizers that strip a leading space in context.
"""
from __future__ import annotations

from typing import Sequence

from tokenizers import Tokenizer

# Prompt tokens decoded as left context of the first output token.
NUM_CONTEXT_TOKENS = 4
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int]):
        self.tokenizer = tokenizer
        self.token_ids = list(prompt_token_ids[-NUM_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)

    def push(self, token_id: int) -> str:
        """Append one token; return the text it completes ("" while a character is split)."""
        self.token_ids.append(token_id)
        return self._delta(is_final=False)

    def flush(self) -> str:
        """Text still held back at the end of the stream (an incomplete character stays U+FFFD)."""
        return self._delta(is_final=True)

    def _delta(self, is_final: bool) -> str:
        decode = self.tokenizer.decode
        prefix_text = decode(self.token_ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        new_text = decode(self.token_ids[self.prefix_offset:], skip_special_tokens=True)
        if len(new_text) <= len(prefix_text) or (new_text.endswith(REPLACEMENT_CHAR) and not is_final):
            return ""
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.token_ids)
        return new_text[len(prefix_text):]


class TextStream:
    """Output text of one request: detokenizes, finds stop strings across token boundaries,
    and holds back a tail that could still become a stop string.

    Use: `is_stopped = push(token, is_stop_checked)` per token, `take()` for the text that is
    safe to send now, `take_final()` once at the end. After a stop string matched, the text
    ends just before it and further pushes are ignored.

    Work per token is bounded by the stop strings, not by the length of the output: only text
    not sent yet is kept (after `take()`, the held tail of len(longest stop) - 1 characters), and
    each stop string is searched for only where it could end in the new text:

        unsent:  ... sent | held tail (<= longest - 1) | new delta |
                          `------------ searched --------------'
    """

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int], stop: Sequence[str] = ()):
        self.detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids)
        self.stop = tuple(stop)
        self.num_held_chars = max(map(len, self.stop), default=1) - 1
        self.unsent = ""
        self.is_stopped = False

    def push(self, token_id: int, is_stop_checked: bool = True) -> bool:
        """Append one token's text; True when a stop string now appears (and was cut)."""
        if self.is_stopped:
            return True
        delta = self.detokenizer.push(token_id)
        if delta:
            self._append(delta, is_stop_checked)
        return self.is_stopped

    def take(self) -> str:
        """Text not sent yet that can no longer turn into a stop string."""
        end = len(self.unsent) if self.is_stopped else len(self.unsent) - self.num_held_chars
        return self._take_until(end)

    def take_final(self, is_stop_checked: bool = True) -> str:
        """Everything not sent yet, after flushing the detokenizer."""
        if not self.is_stopped:
            tail = self.detokenizer.flush()
            if tail:
                self._append(tail, is_stop_checked)
        return self._take_until(len(self.unsent))

    def _append(self, delta: str, is_stop_checked: bool) -> None:
        # A stop string may start up to len(stop)-1 characters before the new delta; take()
        # always leaves those characters unsent.
        search_from = max(0, len(self.unsent) - self.num_held_chars)
        self.unsent += delta
        if not (self.stop and is_stop_checked):
            return
        matches = [i for i in (self.unsent.find(s, search_from) for s in self.stop) if i >= 0]
        if matches:
            self.unsent = self.unsent[:min(matches)]
            self.is_stopped = True

    def _take_until(self, end: int) -> str:
        if end <= 0:
            return ""
        chunk, self.unsent = self.unsent[:end], self.unsent[end:]
        return chunk
