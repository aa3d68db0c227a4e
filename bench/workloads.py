"""Synthetic, reproducible workloads built from token ids (no dataset, no tokenizer).

Every workload is a list of sessions. A session is a prefix plus turns run one after another;
turn t's prompt is

    prefix + (user_0 + output_0) + ... + (user_{t-1} + output_{t-1}) + user_t

where output_i are the token ids the server actually returned. Single-turn workloads are
sessions of one turn, so one driver runs them all. Ids are drawn with a seeded numpy Generator
from the model's vocabulary minus its EOS ids, so the same --seed gives the same prompts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WORKLOADS = ("random", "multiturn", "longdoc", "prefix")


@dataclass(slots=True)
class Turn:
    user_ids: list[int]
    max_tokens: int


@dataclass(slots=True)
class Session:
    prefix_ids: list[int]
    turns: list[Turn]

    @property
    def max_context_len(self) -> int:
        """Tokens in the last turn's prompt plus its output, with every output at max_tokens."""
        return len(self.prefix_ids) + sum(len(t.user_ids) + t.max_tokens for t in self.turns)


def parse_range(text: str) -> tuple[int, int]:
    """'64:512' -> (64, 512) inclusive; '32' -> (32, 32)."""
    low, _, high = str(text).partition(":")
    bounds = (int(low), int(high or low))
    if bounds[0] < 1 or bounds[1] < bounds[0]:
        raise ValueError(f"bad length range {text!r}: want LOW:HIGH with 1 <= LOW <= HIGH")
    return bounds


class TokenSource:
    """Seeded random token ids and lengths from a vocabulary without EOS."""

    def __init__(self, vocab_size: int, eos_token_ids: list[int], seed: int):
        self.allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(eos_token_ids, dtype=np.int64))
        if self.allowed.size == 0:
            raise ValueError(f"vocabulary of {vocab_size} ids has no non-EOS token")
        self.rng = np.random.default_rng(seed)

    def ids(self, length: int) -> list[int]:
        return self.allowed[self.rng.integers(0, self.allowed.size, size=length)].tolist()

    def length(self, bounds: tuple[int, int]) -> int:
        return int(self.rng.integers(bounds[0], bounds[1] + 1))


def random_sessions(source: TokenSource, num_prompts: int, input_len: tuple[int, int],
                    output_len: tuple[int, int]) -> list[Session]:
    return [Session([], [Turn(source.ids(source.length(input_len)), source.length(output_len))])
            for _ in range(num_prompts)]


def multiturn_sessions(source: TokenSource, num_sessions: int, num_turns: int, system_len: int,
                       user_len: tuple[int, int], output_len: tuple[int, int]) -> list[Session]:
    """Sessions share one system prompt; each turn adds a fresh user chunk to the history."""
    system = source.ids(system_len)
    return [Session(list(system),
                    [Turn(source.ids(source.length(user_len)), source.length(output_len))
                     for _ in range(num_turns)])
            for _ in range(num_sessions)]


def longdoc_sessions(source: TokenSource, num_docs: int, doc_len: int, num_questions: int,
                     question_len: tuple[int, int], output_len: tuple[int, int]) -> list[Session]:
    """Questions go round-robin over the documents (q0 of every doc, then q1, ...), so several
    documents are live at once and later questions find their document cached (or evicted)."""
    docs = [source.ids(doc_len) for _ in range(num_docs)]
    return [Session(list(doc), [Turn(source.ids(source.length(question_len)), source.length(output_len))])
            for _ in range(num_questions) for doc in docs]


def prefix_sessions(source: TokenSource, num_prompts: int, prefix_len: int,
                    suffix_len: tuple[int, int], output_len: tuple[int, int]) -> list[Session]:
    prefix = source.ids(prefix_len)
    return [Session(list(prefix), [Turn(source.ids(source.length(suffix_len)), source.length(output_len))])
            for _ in range(num_prompts)]


def build_sessions(args, vocab_size: int, eos_token_ids: list[int]) -> list[Session]:
    """The sessions of args.workload (argparse namespace of bench.serve)."""
    source = TokenSource(vocab_size, eos_token_ids, args.seed)
    output_len = parse_range(args.output_len)
    if args.workload == "random":
        return random_sessions(source, args.num_prompts, parse_range(args.input_len), output_len)
    if args.workload == "multiturn":
        return multiturn_sessions(source, args.sessions, args.turns, args.system_len,
                                  parse_range(args.user_len), output_len)
    if args.workload == "longdoc":
        return longdoc_sessions(source, args.docs, args.doc_len, args.questions,
                                parse_range(args.question_len), output_len)
    if args.workload == "prefix":
        return prefix_sessions(source, args.num_prompts, args.prefix_len,
                               parse_range(args.suffix_len), output_len)
    raise ValueError(f"unknown workload {args.workload!r}; choose one of {WORKLOADS}")


def arrival_offsets(num_sessions: int, request_rate: float, seed: int) -> list[float]:
    """Seconds from the run's start at which each session begins: Poisson arrivals at
    request_rate per second (exponential gaps), or all at 0 for an infinite rate."""
    if request_rate == float("inf"):
        return [0.0] * num_sessions
    rng = np.random.default_rng(seed + 1)
    gaps = rng.exponential(1.0 / request_rate, size=num_sessions)
    return np.concatenate([[0.0], np.cumsum(gaps[1:])]).tolist()
