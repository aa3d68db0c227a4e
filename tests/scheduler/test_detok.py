"""Incremental detokenization (multi-byte UTF-8 split across tokens) and stop strings."""
import pytest
from tokenizers import Tokenizer

from scheduler.detokenizer import IncrementalDetokenizer, TextStream

TEXT = "def naïve(x):\n    return '日本語 — ok' + x  # 🙂 done"


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))


def test_multibyte_characters_split_across_tokens_decode_whole(tokenizer):
    prompt = tokenizer.encode("x = ").ids
    ids = tokenizer.encode(TEXT).ids
    # The premise: some token holds only part of a character.
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    detokenizer = IncrementalDetokenizer(tokenizer, prompt)
    deltas = [detokenizer.push(i) for i in ids]
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) + detokenizer.flush() == TEXT
    assert "" in deltas   # held back while a character was incomplete


def test_incomplete_tail_is_flushed_as_replacement_at_the_end(tokenizer):
    ids = tokenizer.encode("ab🙂").ids
    detokenizer = IncrementalDetokenizer(tokenizer, [])
    text = "".join(detokenizer.push(i) for i in ids[:-1])
    assert text == "ab"
    assert detokenizer.flush().endswith("\ufffd")


def stream_text(tokenizer, text, stop, min_chars_checked=0):
    stream = TextStream(tokenizer, [], stop)
    pieces, is_stopped = [], False
    for index, token in enumerate(tokenizer.encode(text).ids):
        is_stopped = stream.push(token)
        pieces.append(stream.take())
        if is_stopped:
            break
    pieces.append(stream.take_final())
    return pieces, is_stopped


def test_stop_string_across_token_boundaries_is_cut(tokenizer):
    ids = tokenizer.encode(TEXT).ids
    stop = "return '日本"
    # The premise: the stop string spans several tokens.
    assert sum(1 for i in ids if tokenizer.decode([i]) in stop) >= 3
    pieces, is_stopped = stream_text(tokenizer, TEXT, [stop, "never"])
    assert is_stopped
    assert "".join(pieces) == "def naïve(x):\n    "
    # Nothing that later turned out to be part of the stop string was sent early.
    assert all(stop[:2] not in piece for piece in pieces)


def test_earliest_of_several_stop_strings_wins_and_text_streams_before_it(tokenizer):
    pieces, is_stopped = stream_text(tokenizer, TEXT, ["ok", "(x)"])
    assert is_stopped and "".join(pieces) == "def naïve"
    pieces, is_stopped = stream_text(tokenizer, TEXT, ["absent"])
    assert not is_stopped and "".join(pieces) == TEXT
    assert sum(1 for p in pieces if p) > 5   # streamed, not one blob at the end


def test_stop_strings_are_ignored_until_checked(tokenizer):
    stream = TextStream(tokenizer, [], ["def"])
    ids = tokenizer.encode("def f(): def").ids
    results = [stream.push(i, is_stop_checked=False) for i in ids[:3]]
    results += [stream.push(i) for i in ids[3:]]
    assert results[-1] and not any(results[:-1])
    assert stream.take_final() == "def f(): "


def test_only_the_held_tail_is_kept_so_work_per_token_does_not_grow(tokenizer):
    stop = ["x" * 40 + "never", "neither"]
    stream = TextStream(tokenizer, [], stop)
    pieces = []
    for token in tokenizer.encode(TEXT * 40).ids:
        assert not stream.push(token)
        pieces.append(stream.take())
        assert len(stream.unsent) <= stream.num_held_chars == 44
    assert "".join(pieces) + stream.take_final() == TEXT * 40
