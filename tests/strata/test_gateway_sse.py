"""Server-sent events as OpenAI clients parse them: exact bytes, the usage chunk, errors."""
import asyncio
import json

import grpc

from gateway_fakes import ABORT, LENGTH, STOP, FakeBackend, client_of, response, rpc_error
from strata.gateway.sse import DONE, event


def run(coroutine):
    return asyncio.run(coroutine)


async def post_stream(backend, path, body):
    async with client_of(backend) as http:
        reply = await http.post(path, json=dict(body, stream=True))
    return reply


def events_of(text):
    assert text.endswith("\n\n")
    return [block.removeprefix("data: ") for block in text[:-2].split("\n\n")]


def test_an_event_is_one_data_line_of_compact_json_and_a_blank_line():
    assert event({"a": [1, "é"]}) == 'data: {"a":[1,"é"]}\n\n'
    assert DONE == "data: [DONE]\n\n"


def test_a_completion_stream_has_a_chunk_per_text_a_usage_chunk_and_done():
    backend = FakeBackend([[response("ab", [1, 2]), response("", [3]), response("c", [4], LENGTH, 5, 2, completion_tokens=4)]])
    reply = run(post_stream(backend, "/v1/completions",
                            {"prompt": "x", "max_tokens": 4, "stream_options": {"include_usage": True}}))
    assert (reply.status_code, reply.headers["content-type"]) == (200, "text/event-stream; charset=utf-8")
    events = events_of(reply.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"] for c in chunks] == [
        [{"index": 0, "text": "ab", "logprobs": None, "finish_reason": None}],
        [{"index": 0, "text": "c", "logprobs": None, "finish_reason": "length"}],
        []]
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9,
                                   "prompt_tokens_details": {"cached_tokens": 2}}
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["model"] == "tiny"


def test_a_chat_stream_opens_with_the_role_and_has_no_usage_unless_asked():
    backend = FakeBackend([[response("Hi", [1]), response(" there", [2], STOP)]])
    reply = run(post_stream(backend, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}))
    events = events_of(reply.text)
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": "Hi"},
                                                          {"content": " there"}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "stop"]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert "usage" not in chunks[-1]


def test_an_abort_mid_stream_is_an_error_event_never_a_finish():
    backend = FakeBackend([[response("ab", [1, 2]), response("", [], ABORT)]])
    reply = run(post_stream(backend, "/v1/completions", {"prompt": "x"}))
    events = events_of(reply.text)
    assert json.loads(events[1])["error"]["code"] == "aborted"
    assert events[2:] == ["[DONE]"]


def test_a_refused_request_gets_its_status_before_any_event():
    refusal = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "1024 requests are waiting: retry later")
    backend = FakeBackend([[refusal]])
    reply = run(post_stream(backend, "/v1/completions", {"prompt": "x"}))
    assert reply.status_code == 429
    assert reply.json()["error"] == {"message": "1024 requests are waiting: retry later",
                                     "type": "rate_limit_error", "param": None, "code": "resource_exhausted"}
    assert backend.calls[0].is_cancelled


def test_a_failure_after_the_first_event_is_an_error_event_and_every_call_is_cancelled():
    lost = rpc_error(grpc.StatusCode.UNAVAILABLE, "the scheduler went away")
    backend = FakeBackend([[response("a", [1]), lost], [response("b", [2])] * 3])
    reply = run(post_stream(backend, "/v1/completions", {"prompt": "x", "n": 2}))
    events = events_of(reply.text)
    errors = [json.loads(e)["error"] for e in events[:-1] if "error" in json.loads(e)]
    assert errors == [{"message": "the scheduler went away", "type": "service_unavailable", "param": None,
                       "code": "unavailable"}]
    assert [call.is_cancelled for call in backend.calls] == [True, True]


def test_n_streamed_choices_carry_their_index():
    backend = FakeBackend([[response("a", [1], LENGTH)], [response("b", [2], LENGTH)]])
    reply = run(post_stream(backend, "/v1/completions", {"prompt": "x", "n": 2, "seed": 1}))
    chunks = [json.loads(e) for e in events_of(reply.text)[:-1]]
    assert sorted((c["choices"][0]["index"], c["choices"][0]["text"]) for c in chunks) == [(0, "a"), (1, "b")]


def test_streamed_chat_logprobs_ride_on_their_chunk():
    from gateway_fakes import logprobs

    entry = logprobs(-0.5, [5], [-0.5])
    backend = FakeBackend([[response("x", [5], logprobs=[entry]), response("", [], STOP)]])
    reply = run(post_stream(backend, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                              "logprobs": True, "top_logprobs": 1}))
    chunks = [json.loads(e) for e in events_of(reply.text)[:-1]]
    assert chunks[0]["choices"][0]["logprobs"] == {"content": [
        {"token": "<5>", "logprob": -0.5, "bytes": list(b"<5>"),
         "top_logprobs": [{"token": "<5>", "logprob": -0.5, "bytes": list(b"<5>")}]}]}
    assert (chunks[1]["choices"][0]["logprobs"], chunks[1]["choices"][0]["finish_reason"]) == (None, "stop")
