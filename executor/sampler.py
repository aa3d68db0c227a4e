"""Next-token choice for one step's rows, vectorised over the batch for the common cases.

Order (as in vLLM / HF): penalties on the logits (repetition over prompt+output, HF's
divide-positive/multiply-negative; presence and frequency over the output only, OpenAI
semantics) -> greedy rows take the argmax -> others: / temperature -> softmax -> min_p,
top_k, top_p truncation -> draw.

The draw is `argmax(probs / E)` with E ~ Exponential(1) per token (equivalent to sampling from
probs). A seeded request draws E from its own generator seeded with (seed, number of output
tokens so far), so its tokens do not depend on the batch around it or on a re-admission.

Logprobs are those of the raw model distribution (log_softmax of the logits before penalties,
temperature and truncation), vLLM's default.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from executor.sampling_params import Sampling

_MASK64 = (1 << 64) - 1


class RowContext(NamedTuple):
    """What the sampler needs to know about one row's request."""
    sampling: Sampling
    token_ids: Sequence[int]  # prompt + output (not copied: only penalised rows slice it)
    num_prompt_tokens: int

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens


class TopLogprobs(NamedTuple):
    logprob: float
    top_token_ids: list[int]
    top_logprobs: list[float]


class SampleOutput(NamedTuple):
    token_ids: list[int]
    logprobs: list[TopLogprobs | None]


def sample(logits: Tensor, rows: Sequence[RowContext]) -> SampleOutput:
    """logits fp32 [N, vocab], one row per entry of rows. Does not modify logits."""
    processed = _apply_penalties(logits, rows)
    # max().indices: the first maximum, as argmax, but vectorised on the CPU (1.0 vs 2.8 ms at
    # 64 x 32000, 1 thread).
    token_ids = processed.max(dim=-1).indices
    random_rows = [i for i, row in enumerate(rows) if not row.sampling.is_greedy]
    if random_rows:
        index = torch.tensor(random_rows, device=logits.device)
        token_ids[index] = _draw(processed[index], [rows[i] for i in random_rows])
    token_list = token_ids.tolist()
    return SampleOutput(token_list, _logprobs(logits, rows, token_list))


def _apply_penalties(logits: Tensor, rows: Sequence[RowContext]) -> Tensor:
    penalised = [i for i, row in enumerate(rows) if row.sampling.has_penalties]
    if not penalised:
        return logits
    logits = logits.clone()
    vocab = logits.shape[-1]
    for i in penalised:
        s, row = rows[i].sampling, logits[i]
        split = rows[i].num_prompt_tokens
        output = torch.tensor(rows[i].token_ids[split:], dtype=torch.long, device=logits.device)
        if s.repetition_penalty != 1.0:
            seen = torch.tensor(rows[i].token_ids[:split], dtype=torch.long, device=logits.device)
            seen = torch.unique(torch.cat([seen, output]))
            values = row[seen]
            row[seen] = torch.where(values > 0, values / s.repetition_penalty, values * s.repetition_penalty)
        if output.numel() and (s.presence_penalty or s.frequency_penalty):
            counts = torch.bincount(output, minlength=vocab).to(row.dtype)
            row -= s.frequency_penalty * counts + s.presence_penalty * (counts > 0).to(row.dtype)
    return logits


def _draw(logits: Tensor, rows: Sequence[RowContext]) -> Tensor:
    temperature = torch.tensor([row.sampling.temperature for row in rows], device=logits.device)
    probs = torch.softmax(logits / temperature[:, None], dim=-1)
    if any(row.sampling.has_truncation for row in rows):
        probs = _truncate(probs, rows)
    noise = torch.empty_like(probs)
    unseeded = [i for i, row in enumerate(rows) if row.sampling.seed is None]
    if unseeded:
        noise[unseeded] = torch.empty((len(unseeded), probs.shape[-1]), device=probs.device).exponential_()
    for i, row in enumerate(rows):
        if row.sampling.seed is not None:
            generator = torch.Generator(device=probs.device)
            generator.manual_seed(_mix(row.sampling.seed, row.num_output_tokens))
            noise[i].exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1)


def _truncate(probs: Tensor, rows: Sequence[RowContext]) -> Tensor:
    """Zero the tokens min_p / top_k / top_p drop (the argmax draw needs no renormalising)."""
    device, vocab = probs.device, probs.shape[-1]
    min_p = torch.tensor([row.sampling.min_p for row in rows], device=device)
    top_k = torch.tensor([row.sampling.top_k or vocab for row in rows], device=device)
    top_p = torch.tensor([row.sampling.top_p for row in rows], device=device)
    probs = probs.masked_fill(probs < min_p[:, None] * probs.amax(dim=-1, keepdim=True), 0.0)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=device)[None, :]
    # Keep the smallest prefix whose mass reaches top_p: a token is dropped when the mass
    # strictly before it already reaches top_p. The top token is always kept.
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    is_dropped = (rank >= top_k[:, None]) | ((mass_before >= top_p[:, None]) & (rank > 0))
    sorted_probs = sorted_probs.masked_fill(is_dropped, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def _logprobs(logits: Tensor, rows: Sequence[RowContext], token_ids: list[int]) -> list[TopLogprobs | None]:
    result: list[TopLogprobs | None] = [None] * len(rows)
    wanted = [i for i, row in enumerate(rows) if row.sampling.num_logprobs is not None]
    if not wanted:
        return result
    values = torch.log_softmax(logits[wanted], dim=-1)
    for n, i in enumerate(wanted):
        num_top = rows[i].sampling.num_logprobs
        top = values[n].topk(num_top) if num_top else None
        result[i] = TopLogprobs(logprob=float(values[n, token_ids[i]]),
                                top_token_ids=top.indices.tolist() if top else [],
                                top_logprobs=top.values.tolist() if top else [])
    return result


def _mix(seed: int, num_output_tokens: int) -> int:
    """splitmix64 of (seed, position): a distinct, well-spread generator seed per draw."""
    z = (seed * 0x9E3779B97F4A7C15 + num_output_tokens + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)
