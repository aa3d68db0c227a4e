"""A scheduler wired to the fake executor, requests for it, and the tokens the fake predicts."""
import itertools

from bench.fake_executor import FakeExecutor
from protos.v1 import common_pb2
from scheduler.block_hash import make_namespace
from scheduler.request import Request, StopCriteria
from scheduler.scheduler import Scheduler, SchedulerConfig

ARRIVALS = itertools.count()


def make_scheduler(num_blocks=64, block_size=4, max_num_batched_tokens=8, max_num_seqs=8,
                   max_model_len=256, eos=frozenset()):
    config = SchedulerConfig(block_size, num_blocks, max_num_batched_tokens, max_num_seqs,
                             max_model_len, frozenset(eos))
    return Scheduler(config), FakeExecutor(vocab_size=512, block_size=block_size, num_blocks=num_blocks)


def make_request(request_id, prompt, max_tokens=4, priority=0, salt="", **stopping):
    return Request(request_id, list(prompt), common_pb2.SamplingParams(temperature=0.0),
                   StopCriteria(max_tokens=max_tokens, **stopping),
                   make_namespace("m", "float32", (1,), salt), next(ARRIVALS), priority)


def expected_tokens(prompt, num_tokens):
    tokens = list(prompt)
    for _ in range(num_tokens):
        tokens.append(FakeExecutor.next_token(tokens, 512))
    return tokens[len(prompt):]
