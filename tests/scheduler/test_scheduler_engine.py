"""The engine loop with the fake executor (no gRPC): streams, aborts, stop strings, a rejected
plan, an executor that fails the same request every time."""
import time

import grpc
import pytest
from tokenizers import Tokenizer

from protos.v1 import generation_pb2
from scheduler.engine import Engine
from scheduler.detokenizer import TextStream
from scheduler.errors import AlreadyExists
from scheduler_builders import expected_tokens, make_request, make_scheduler


class Failed(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.INTERNAL

    def details(self):
        return "step failed (test)"


class Rejected(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self):
        return "bad plan (test)"


@pytest.fixture
def engine(tokenizer_dir):
    scheduler, executor = make_scheduler(num_blocks=64, max_num_batched_tokens=64)
    rejected_ids, failing_ids = set(), set()

    def step(plan):
        if any(r.request_id in rejected_ids for r in plan.new_requests):
            raise Rejected()
        if any(r.request_id in failing_ids for r in plan.new_requests):
            raise Failed()
        time.sleep(0.002)   # a step takes time, so a test can act between steps
        return executor.step(plan)

    running = Engine(scheduler, step, Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")),
                     max_waiting=16, on_executor_lost=executor.requests.clear)
    running.rejected_ids, running.failing_ids = rejected_ids, failing_ids
    running.start()
    yield running
    running.shutdown()


def drain(stream):
    return list(stream.responses(lambda: True))


def test_streams_get_their_tokens_and_a_final_usage(engine):
    streams = {name: engine.submit(make_request(name, range(1, 10), max_tokens=5)) for name in "abc"}
    for name, stream in streams.items():
        responses = drain(stream)
        tokens = [t for r in responses for t in r.token_ids]
        assert tokens == expected_tokens(range(1, 10), 5)
        assert responses[-1].finish_reason == generation_pb2.FINISH_REASON_LENGTH
        assert responses[-1].usage.completion_tokens == 5 and responses[-1].usage.prompt_tokens == 9


def test_duplicate_id_in_flight_is_refused(engine):
    first = make_request("same", range(1, 10), max_tokens=200)
    engine.submit(first)
    with pytest.raises(AlreadyExists):
        engine.submit(make_request("same", range(1, 10)))
    engine.abort(first)


def test_abort_from_the_handler_ends_the_stream_and_frees_blocks(engine):
    request = make_request("long", range(1, 10), max_tokens=200)
    responses = engine.submit(request).responses(lambda: True)
    assert not next(responses).finish_reason
    engine.abort(request)
    rest = list(responses)
    assert 1 <= len(rest) and sum(len(r.token_ids) for r in rest) < 150
    assert rest[-1].finish_reason == generation_pb2.FINISH_REASON_ABORT
    other = drain(engine.submit(make_request("after", range(1, 4), max_tokens=2)))
    assert other[-1].finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert engine.scheduler.pool.num_free_blocks == 64


def test_a_rejected_plan_aborts_its_requests_and_serving_goes_on(engine):
    engine.rejected_ids.add("bad")
    bad = drain(engine.submit(make_request("bad", range(1, 10), max_tokens=3)))
    assert bad[-1].finish_reason == generation_pb2.FINISH_REASON_ABORT
    engine.rejected_ids.clear()
    good = drain(engine.submit(make_request("good", range(1, 10), max_tokens=3)))
    assert [t for r in good for t in r.token_ids] == expected_tokens(range(1, 10), 3)


def test_a_request_the_executor_always_fails_is_aborted_and_serving_goes_on(engine):
    engine.failing_ids.add("doomed")
    doomed = drain(engine.submit(make_request("doomed", range(1, 10), max_tokens=3)))
    assert doomed[-1].finish_reason == generation_pb2.FINISH_REASON_ABORT
    assert not any(r.token_ids for r in doomed)
    good = drain(engine.submit(make_request("good", range(1, 10), max_tokens=3)))
    assert [t for r in good for t in r.token_ids] == expected_tokens(range(1, 10), 3)
    assert engine.scheduler.pool.num_free_blocks == 64 and engine.scheduler.pool.check_integrity()


def text_of(tokenizer, prompt, tokens):
    stream = TextStream(tokenizer, prompt)
    return "".join(stream.take() for token in tokens if not stream.push(token)) + stream.take_final()


def test_a_stop_string_ends_the_stream_at_its_token_and_frees_the_id_at_once(engine):
    prompt, stop = list(range(1, 10)), "None Dec"
    tokens = expected_tokens(prompt, 40)
    full_text = text_of(engine.tokenizer, prompt, tokens)
    # The first token whose text completes the stop string (the premise: it spans tokens).
    end = next(n for n in range(1, 41) if stop in text_of(engine.tokenizer, prompt, tokens[:n]))
    assert stop not in text_of(engine.tokenizer, prompt, tokens[end - 1:end]) and end < 30
    request = make_request("stops", prompt, max_tokens=40, stop=(stop,))
    responses = drain(engine.submit(request))
    assert [t for r in responses for t in r.token_ids] == tokens[:end]
    assert "".join(r.text for r in responses) == full_text[:full_text.index(stop)]
    assert responses[-1].finish_reason == generation_pb2.FINISH_REASON_STOP
    assert (responses[-1].usage.completion_tokens, responses[-1].usage.prompt_tokens) == (end, 9)
    # The engine let go of the request before the final response: its id is free.
    again = drain(engine.submit(make_request("stops", prompt, max_tokens=3)))
    assert [t for r in again for t in r.token_ids] == tokens[:3]
    assert engine.scheduler.pool.num_free_blocks == 64 and not engine.scheduler.requests


def test_a_stop_string_before_min_tokens_is_not_a_stop(engine):
    prompt, stop = list(range(1, 10)), "None Dec"
    tokens = expected_tokens(prompt, 40)
    end = next(n for n in range(1, 41) if stop in text_of(engine.tokenizer, prompt, tokens[:n]))
    request = make_request("late", prompt, max_tokens=40, stop=(stop,), min_tokens=end + 1)
    responses = drain(engine.submit(request))
    assert [t for r in responses for t in r.token_ids] == tokens
    assert "".join(r.text for r in responses) == text_of(engine.tokenizer, prompt, tokens)
    assert responses[-1].finish_reason == generation_pb2.FINISH_REASON_LENGTH
