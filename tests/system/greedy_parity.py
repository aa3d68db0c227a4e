"""Greedy generation two ways: transformers' `generate` (the reference) and a Strata server's
Generate stream, for the tests that require the two to match token for token."""
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
