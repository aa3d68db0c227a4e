"""The OpenAI-compatible gateway through `strata up --http-port` on a tiny Llama, with the real
`openai` client: the same tokens as the gRPC API, usage with cached tokens, n choices, errors
in OpenAI's shape, the API key, and streams dropped mid-way freeing their blocks."""
import asyncio
import json
import os
import shutil
import time
from unittest import mock

import httpx2 as httpx
import openai
import pytest

from protos.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from runtime.token import with_token
from servers import free_port, start_up, wait_http_ready

pytestmark = pytest.mark.system

KEY = "test-key-123"
MODEL = "tiny-llama"
BLOCK_SIZE = 16
NUM_DEVICE_BLOCKS = 256
TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] "
            "+ eos_token + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
PROMPT = "def fibonacci(n):"
SYSTEM = "You are a careful Python programmer. " * 6   # several full blocks of prefix


@pytest.fixture(scope="module")
def chat_model_dir(llama_dir, tmp_path_factory):
    """llama_dir with a chat template in its tokenizer_config.json."""
    target = tmp_path_factory.mktemp("chat") / "llama"
    shutil.copytree(llama_dir, target)
    config = json.loads((target / "tokenizer_config.json").read_text())
    (target / "tokenizer_config.json").write_text(json.dumps(dict(config, chat_template=TEMPLATE)))
    return target


@pytest.fixture(scope="module")
def server(chat_model_dir):
    http_port = free_port()
    with mock.patch.dict(os.environ, STRATA_API_KEY=KEY):
        context = start_up(["--model", str(chat_model_dir), "--http-port", str(http_port), "--model-name", MODEL, "--no-kvstore",
                            "--num-device-blocks", str(NUM_DEVICE_BLOCKS), "--block-size", str(BLOCK_SIZE)])
        running = context.__enter__()
    running.base_url = f"http://127.0.0.1:{http_port}"
    # The inherited STRATA_API_KEY guards the scheduler's gRPC port too (the gateway presents it).
    running.stub = generation_pb2_grpc.GenerationStub(with_token(running.channel, KEY))
    try:
        wait_http_ready(running.base_url + "/health")
        yield running
    finally:
        context.__exit__(None, None, None)



@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def grpc_text(server, max_tokens, **input_fields):
    request = generation_pb2.GenerateRequest(
        sampling=common_pb2.SamplingParams(temperature=0.0),
        stopping=generation_pb2.StoppingCriteria(max_tokens=max_tokens, ignore_eos=True), **input_fields)
    return "".join(response.text for response in server.stub.Generate(request, timeout=60))


def rendered_chat(messages):
    text = "".join(f"<|{m['role']}|>\n{m['content']}<|endoftext|>\n" for m in messages)
    return text + "<|assistant|>\n"


def test_completion_greedy_text_equals_the_grpc_api_streamed_and_not(server, client):
    expected = grpc_text(server, 12, text=PROMPT)
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert reply.choices[0].text == expected
    assert reply.choices[0].finish_reason == "length"
    assert (reply.usage.completion_tokens, reply.object) == (12, "text_completion")
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == reply.usage.prompt_tokens


def test_chat_greedy_text_equals_the_grpc_api_on_the_rendered_template(server, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort a list."}]
    expected = grpc_text(server, 10, text=rendered_chat(messages))
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=10,
                                           temperature=0, extra_body={"ignore_eos": True})
    assert (reply.choices[0].message.role, reply.choices[0].message.content) == ("assistant", expected)
    assert reply.object == "chat.completion"
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_repeated_chat_prefix_reports_its_cached_tokens(server, client):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Reverse a string."}]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    num_prompt_tokens = second.usage.prompt_tokens
    assert num_prompt_tokens > 3 * BLOCK_SIZE
    assert second.usage.prompt_tokens_details.cached_tokens == (num_prompt_tokens - 1) // BLOCK_SIZE * BLOCK_SIZE
    assert first.usage.prompt_tokens == num_prompt_tokens


def test_n_choices_with_a_seed_are_three_and_the_same_on_a_repeat(server, client):
    def texts():
        reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, n=3, seed=7,
                                          temperature=1.0, extra_body={"ignore_eos": True})
        assert [c.index for c in reply.choices] == [0, 1, 2]
        assert reply.usage.completion_tokens == 24
        return [c.text for c in reply.choices]

    first = texts()
    assert texts() == first
    assert len(set(first)) == 3


@pytest.mark.parametrize("fields, param", [
    ({"temperature": -1}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"model": "no-such-model"}, "model"),
    ({"top_p": 2.0}, "top_p"),
    ({"logit_bias": {"1": 5}}, "logit_bias"),
])
def test_a_bad_field_is_a_400_in_openais_error_shape(server, fields, param):
    body = dict({"model": MODEL, "prompt": PROMPT}, **fields)
    reply = httpx.post(server.base_url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_the_openai_client_raises_bad_request_for_an_unknown_model(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="other", prompt=PROMPT, max_tokens=2)
    assert raised.value.status_code == 400
    assert raised.value.body["code"] == "model_not_found"


def test_a_missing_or_wrong_api_key_is_a_401_and_health_stays_open(server):
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.models.list()
    assert (raised.value.status_code, raised.value.body["type"]) == (401, "authentication_error")
    # The openai client refuses to send no key at all: a plain request without the header.
    reply = httpx.post(server.base_url + "/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert (reply.status_code, reply.json()["error"]["code"]) == (401, "invalid_api_key")
    for path in ("/tokenize", "/detokenize"):
        assert httpx.post(server.base_url + path, json={"prompt": "x"}).status_code == 401
    assert httpx.get(server.base_url + "/health").json() == {"status": "ok"}


def test_models_tokenize_and_detokenize(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    headers = {"Authorization": f"Bearer {KEY}"}
    ids = list(server.stub.Tokenize(generation_pb2.TokenizeRequest(text=PROMPT)).ids)
    tokenized = httpx.post(server.base_url + "/tokenize", json={"prompt": PROMPT}, headers=headers).json()
    assert (tokenized["tokens"], tokenized["count"]) == (ids, len(ids))
    detokenized = httpx.post(server.base_url + "/detokenize", json={"tokens": ids}, headers=headers).json()
    assert detokenized == {"prompt": PROMPT}


async def read_stream(http, index, is_dropped):
    """One streamed completion; a dropped one disconnects after its first chunk. Dropped streams
    ask for 900 tokens: 57 blocks each, so 16 of them would run for many seconds (4 at a time in
    256 blocks) unless the disconnect cancels them."""
    body = {"model": MODEL, "prompt": f"{PROMPT} # {index}", "max_tokens": 900 if is_dropped else 48,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    events = []
    async with http.stream("POST", "/v1/completions", json=body) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
                if is_dropped:
                    return None
    assert events[-1] == "[DONE]"
    return json.loads(events[-2])["usage"]["completion_tokens"]


async def run_streams(base_url, num_streams, num_dropped):
    limits = httpx.Limits(max_connections=num_streams)
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"},
                                 timeout=60, limits=limits) as http:
        return await asyncio.gather(*(read_stream(http, i, i % 4 == 0) for i in range(num_streams)))


def wait_idle(server, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = server.stub.GetStats(generation_pb2.GetStatsRequest())
        if stats.num_running == 0 and stats.num_waiting == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"not idle after {timeout_s}s: {stats}")


def test_64_streams_with_16_dropped_mid_stream_free_every_device_block(server):
    results = asyncio.run(run_streams(server.base_url, 64, 16))
    assert results == [None, 48, 48, 48] * 16
    wait_idle(server, timeout_s=3.0)   # the dropped ones were aborted, not left to run 900 tokens
    time.sleep(0.7)   # the engine checks integrity once idle
    stats = server.stub.GetStats(generation_pb2.GetStatsRequest())
    assert stats.num_free_device_blocks == stats.num_device_blocks == NUM_DEVICE_BLOCKS
    assert stats.is_integrity_ok


def test_a_collected_request_whose_client_left_is_cancelled_too(server):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 900, "n": 16, "temperature": 0, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.base_url + "/v1/completions", json=body, timeout=1.0,
                   headers={"Authorization": f"Bearer {KEY}"})
    wait_idle(server, timeout_s=3.0)   # 16 x 900 tokens, 4 at a time in 256 blocks: many seconds
    stats = server.stub.GetStats(generation_pb2.GetStatsRequest())
    assert stats.num_free_device_blocks == NUM_DEVICE_BLOCKS


def test_metrics_is_one_open_scrape_of_the_scheduler(server, client):
    """GET /metrics needs no key and returns the scheduler's Prometheus text: after a completion
    of 5 tokens the generation counter has grown by exactly 5."""
    from prometheus_client.parser import text_string_to_metric_families

    def generated() -> float:
        reply = httpx.get(server.base_url + "/metrics", timeout=10)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
        families = {family.name: family for family in text_string_to_metric_families(reply.text)}
        return families["strata:generation_tokens"].samples[0].value

    before = generated()
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0,
                              extra_body={"ignore_eos": True})
    assert generated() == before + 5
