"""Greedy generation two ways: transformers' `generate` (the reference) and a Strata server's
Generate stream, for the tests that require the two to match token for token; and the
workload of requests in families that share prefixes."""
import random

import torch

from protos.v1 import common_pb2, generation_pb2


def hf_greedy(model, prompt: list[int], max_tokens: int) -> list[int]:
    input_ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                             max_new_tokens=max_tokens, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def greedy_request(prompt: list[int], max_tokens: int) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        tokens=generation_pb2.TokenIds(ids=prompt), sampling=common_pb2.SamplingParams(temperature=0.0),
        stopping=generation_pb2.StoppingCriteria(max_tokens=max_tokens, ignore_eos=True))


def generate_tokens(stub, prompt: list[int], max_tokens: int) -> tuple[list[int], int]:
    tokens, reason = [], None
    for response in stub.Generate(greedy_request(prompt, max_tokens), timeout=300):
        tokens += response.token_ids
        reason = response.finish_reason
    return tokens, reason


def generate_cached(stub, prompt: list[int], max_tokens: int) -> tuple[list[int], int]:
    """(tokens, usage.cached_tokens) of one greedy Generate."""
    tokens, cached = [], 0
    for response in stub.Generate(greedy_request(prompt, max_tokens), timeout=300):
        tokens += response.token_ids
        if response.HasField("usage"):
            cached = response.usage.cached_tokens
    return tokens, cached


def shared_prefix_cases(vocab_size: int, num_requests: int, seed: int = 5):
    """Requests in 16 families sharing a 48-token prefix (12 blocks each: together 3x the device
    pool), each with its own suffix."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(1, vocab_size) for _ in range(48)] for _ in range(16)]
    return [(prefixes[i % 16] + [rng.randrange(1, vocab_size) for _ in range(rng.randint(4, 24))],
             rng.randint(4, 24)) for i in range(num_requests)]
