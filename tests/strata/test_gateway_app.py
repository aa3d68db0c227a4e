"""The gateway's routes in-process on a scripted backend: the exact JSON of each endpoint, the API
key, FastAPI's 422 as OpenAI's 400, and the requests sent to the scheduler."""
import asyncio

from gateway_fakes import ABORT, LENGTH, STOP, FakeBackend, client_of, logprobs, response


def call(backend, method, path, body=None, headers=None, **options):
    async def send():
        async with client_of(backend, **options) as http:
            return await http.request(method, path, json=body, headers=headers)
    return asyncio.run(send())


def test_a_completion_is_collected_with_usage_summed_over_choices():
    backend = FakeBackend([[response("a", [1]), response("b", [2], LENGTH, 4, 1)],
                           [response("cd", [3, 4], STOP, 4, 2)]])
    reply = call(backend, "POST", "/v1/completions", {"prompt": "x", "n": 2, "seed": 9, "model": "tiny"})
    body = reply.json()
    assert reply.status_code == 200
    assert body["choices"] == [{"index": 0, "text": "ab", "logprobs": None, "finish_reason": "length"},
                               {"index": 1, "text": "cd", "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7,
                             "prompt_tokens_details": {"cached_tokens": 1}}
    assert (body["object"], body["model"]) == ("text_completion", "tiny")
    assert body["id"].startswith("cmpl-")
    assert [r.sampling.seed for r in backend.requests] == [9, 10]
    assert [r.request_id for r in backend.requests] == [body["id"] + "-0", body["id"] + "-1"]


def test_a_list_of_prompts_gives_n_choices_each_and_one_usage_per_prompt():
    backend = FakeBackend([[response("a", [1], LENGTH, 3)], [response("b", [2], LENGTH, 5)]])
    body = call(backend, "POST", "/v1/completions", {"prompt": ["p", "qq"]}).json()
    assert [c["text"] for c in body["choices"]] == ["a", "b"]
    assert [r.text for r in backend.requests] == ["p", "qq"]
    assert body["usage"]["prompt_tokens"] == 8


def test_a_chat_is_rendered_tokenized_and_answered_as_an_assistant_message():
    backend = FakeBackend([[response("Hello", [7], STOP)]])
    reply = call(backend, "POST", "/v1/chat/completions",
                 {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5})
    assert reply.json()["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                                        "logprobs": None, "finish_reason": "stop"}]
    rendered = "<|user|>\nhi<|endoftext|>\n<|assistant|>\n"
    assert list(backend.requests[0].tokens.ids) == [ord(c) % 100 for c in rendered]
    assert backend.requests[0].stopping.max_tokens == 5


def test_a_chat_without_max_tokens_gets_what_the_model_length_leaves():
    backend = FakeBackend([[response("a", [1], STOP)]])
    call(backend, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    num_prompt_tokens = len(backend.requests[0].tokens.ids)
    assert backend.requests[0].stopping.max_tokens == 64 - num_prompt_tokens


def test_a_model_without_a_chat_template_gets_a_400_on_chat():
    reply = call(FakeBackend([], chat_template=""), "POST", "/v1/chat/completions",
                 {"messages": [{"role": "user", "content": "hi"}]})
    assert (reply.status_code, reply.json()["error"]["code"]) == (400, "chat_template_missing")


def test_an_aborted_generation_is_a_500_error():
    reply = call(FakeBackend([[response("a", [1]), response("", [], ABORT)]]), "POST", "/v1/completions",
                 {"prompt": "x"})
    assert reply.status_code == 500
    assert reply.json()["error"]["code"] == "aborted"


def test_completion_and_chat_logprobs_in_openais_shapes():
    entries = [logprobs(-0.5, [5, 6], [-0.5, -1.0]), logprobs(-0.25, [6, 5], [-0.25, -2.0])]
    backend = FakeBackend([[response("xy", [5, 6], LENGTH, logprobs=entries)]])
    body = call(backend, "POST", "/v1/completions", {"prompt": "x", "logprobs": 2}).json()
    assert body["choices"][0]["logprobs"] == {
        "tokens": ["<5>", "<6>"], "token_logprobs": [-0.5, -0.25],
        "top_logprobs": [{"<5>": -0.5, "<6>": -1.0}, {"<6>": -0.25, "<5>": -2.0}], "text_offset": [0, 3]}
    assert backend.requests[0].sampling.logprobs == 2
    backend = FakeBackend([[response("xy", [5, 6], LENGTH, logprobs=entries)]])
    body = call(backend, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                          "logprobs": True, "top_logprobs": 1}).json()
    first = body["choices"][0]["logprobs"]["content"][0]
    assert first == {"token": "<5>", "logprob": -0.5, "bytes": list(b"<5>"),
                     "top_logprobs": [{"token": "<5>", "logprob": -0.5, "bytes": list(b"<5>")},
                                      {"token": "<6>", "logprob": -1.0, "bytes": list(b"<6>")}]}


def test_the_api_key_guards_v1_tokenize_and_detokenize_but_not_health():
    backend = FakeBackend([])
    for path, method in [("/v1/models", "GET"), ("/tokenize", "POST"), ("/detokenize", "POST")]:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "k"}):
            reply = call(backend, method, path, {}, headers, api_key="k")
            assert reply.status_code == 401
            assert reply.json()["error"]["type"] == "authentication_error"
    assert call(backend, "GET", "/health", api_key="k").json() == {"status": "ok"}
    models = call(backend, "GET", "/v1/models", headers={"Authorization": "Bearer k"}, api_key="k").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]


def test_model_name_renames_the_served_model_and_another_name_is_a_400():
    backend = FakeBackend([])
    reply = call(backend, "POST", "/v1/completions", {"prompt": "x", "model": "tiny"}, model_name="served")
    assert reply.status_code == 400
    assert reply.json()["error"] == {"message": "model 'tiny' is not served here: this server serves 'served'",
                                     "type": "invalid_request_error", "param": "model", "code": "model_not_found"}


def test_a_bad_or_unknown_field_is_a_400_not_fastapis_422():
    for body, param in [({"prompt": "x", "n": 0}, "n"), ({"prompt": "x", "echo": True}, "echo"),
                        ({"prompt": "x", "stop_token_ids": [-1]}, "stop_token_ids.0"),
                        ({"n": 1}, "prompt")]:
        reply = call(FakeBackend([]), "POST", "/v1/completions", body)
        assert (reply.status_code, reply.json()["error"]["param"]) == (400, param)


def test_tokenize_and_detokenize_in_vllms_shapes():
    backend = FakeBackend([])
    assert call(backend, "POST", "/tokenize", {"prompt": "ab"}).json() == {
        "count": 2, "max_model_len": 64, "tokens": [97, 98], "token_strs": None}
    chat = call(backend, "POST", "/tokenize", {"messages": [{"role": "user", "content": "a"}]}).json()
    assert chat["count"] == len("<|user|>\na<|endoftext|>\n<|assistant|>\n")
    assert call(backend, "POST", "/detokenize", {"tokens": [1, 2]}).json() == {"prompt": "<1><2>"}


def test_version_answers_without_the_scheduler():
    assert set(call(FakeBackend([]), "GET", "/version").json()) == {"version"}


def test_a_chat_rendered_with_bos_is_tokenized_without_the_tokenizers_special_tokens():
    backend = FakeBackend([[response("a", [1], STOP)]], chat_template="{{ bos_token }}{{ messages[0]['content'] }}")
    backend.template.bos_token = "<s>"
    seen = []
    original = backend.tokenize

    async def tokenize(text, is_special_added):
        seen.append((text, is_special_added))
        return await original(text, is_special_added)
    backend.tokenize = tokenize
    call(backend, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert seen == [("<s>hi", False)]


def test_the_gateway_command_takes_the_api_key_from_the_environment(monkeypatch):
    from strata.gateway.server import parse_args

    monkeypatch.setenv("STRATA_API_KEY", "from-env")
    assert parse_args([]).api_key == "from-env"
    assert parse_args(["--api-key", "flag"]).api_key == "flag"
    monkeypatch.delenv("STRATA_API_KEY")
    args = parse_args(["--scheduler", "h:1", "--port", "9", "--model-name", "m"])
    assert (args.api_key, args.scheduler, args.host, args.port, args.model_name) == (None, "h:1", "127.0.0.1", 9, "m")


def test_only_loopback_hosts_count_as_private():
    from strata.gateway.server import is_loopback

    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.1.2.3", "host")] == [
        True, True, True, False, False, False]
