"""The public API through the real processes (executor + scheduler on a tiny Llama)."""
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.v1 import common_pb2, generation_pb2
from raw_bytes import with_raw_bytes
from servers import start_daemons

pytestmark = pytest.mark.system

GREEDY = common_pb2.SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def server(llama_dir):
    with start_daemons(llama_dir, num_device_blocks=512) as running:
        yield running


def make_request(prompt, max_tokens=16, **fields):
    ids = generation_pb2.TokenIds(ids=prompt) if isinstance(prompt, list) else None
    text = prompt if isinstance(prompt, str) else None
    stopping = fields.pop("stopping", None) or generation_pb2.StoppingCriteria(
        max_tokens=max_tokens, ignore_eos=True)
    return generation_pb2.GenerateRequest(tokens=ids, text=text, sampling=fields.pop("sampling", GREEDY),
                                          stopping=stopping, **fields)


def collect(stub, request, timeout=120):
    tokens, text, last = [], "", None
    for response in stub.Generate(request, timeout=timeout):
        tokens += response.token_ids
        text += response.text
        last = response
    return tokens, text, last


def stats(stub):
    return stub.GetStats(generation_pb2.GetStatsRequest())


def wait_idle(stub, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = stats(stub)
        if current.num_running == 0 and current.num_waiting == 0 \
                and current.num_free_device_blocks == current.num_device_blocks:
            time.sleep(0.7)   # the engine checks integrity once it is idle
            return stats(stub)
        time.sleep(0.1)
    raise AssertionError(f"server not idle: {stats(stub)}")


def test_model_info_tokenize_health_and_text_round_trip(server):
    info = server.stub.GetModelInfo(generation_pb2.GetModelInfoRequest())
    assert info.architecture == "LlamaForCausalLM" and info.block_size == 16
    assert info.max_model_len == 1024 and list(info.eos_token_ids) == [0]
    ids = server.stub.Tokenize(generation_pb2.TokenizeRequest(text="def main():")).ids
    tokens_from_ids, text_from_ids, _ = collect(server.stub, make_request(list(ids), 24))
    tokens, text, last = collect(server.stub, make_request("def main():", 24))
    assert tokens == tokens_from_ids and text == text_from_ids and len(tokens) == 24
    assert last.usage.prompt_tokens == len(ids) and last.usage.completion_tokens == 24
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "strata.v1.Generation"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_stop_string_cuts_text_and_stops(server):
    tokens, text, _ = collect(server.stub, make_request("x = 1\n", 40))
    stop = text[10:14]
    assert len(stop) == 4 and text.index(stop) >= 10 - 3
    stopping = generation_pb2.StoppingCriteria(max_tokens=40, stop=[stop], ignore_eos=True)
    stopped_tokens, stopped_text, last = collect(server.stub, make_request("x = 1\n", stopping=stopping))
    assert stopped_text == text[:text.index(stop)]
    assert last.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert stopped_tokens == tokens[:len(stopped_tokens)] and len(stopped_tokens) < 40


def test_short_request_submitted_later_finishes_first(server):
    finished = []
    started = threading.Event()

    def run(name, max_tokens):
        for response in server.stub.Generate(make_request(list(range(1, 40)), max_tokens), timeout=120):
            started.set()
        finished.append(name)

    long_thread = threading.Thread(target=run, args=("long", 400))
    long_thread.start()
    assert started.wait(30)
    run("short", 5)
    long_thread.join()
    assert finished == ["short", "long"]


def test_shared_prefix_hits_the_cache_and_salt_keeps_it_apart(server):
    rng = random.Random(3)
    prefix = [rng.randrange(1, 512) for _ in range(200)]
    collect(server.stub, make_request(prefix + [5, 6, 7], 4))
    second = prefix + [9, 10, 11, 12]
    cached_tokens, _, cached_last = collect(server.stub, make_request(second, 20))
    salted_tokens, _, salted_last = collect(server.stub, make_request(second, 20, cache_salt="tenant-b"))
    assert cached_last.usage.cached_tokens >= 192
    assert salted_last.usage.cached_tokens == 0
    assert cached_tokens == salted_tokens


def cancel_at_random_point(stub, seed):
    rng = random.Random(seed)
    prompt = [rng.randrange(1, 512) for _ in range(rng.randint(5, 120))]
    mode = rng.choice(["cancel", "cancel", "deadline"])
    timeout = rng.uniform(0.05, 1.5) if mode == "deadline" else 120
    call = stub.Generate(make_request(prompt, 300), timeout=timeout)
    num_reads = rng.randint(0, 8)
    try:
        for index, _ in enumerate(call):
            if index >= num_reads:
                break
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    call.cancel()


def test_cancelled_streams_free_everything(server):
    with ThreadPoolExecutor(50) as pool:
        list(pool.map(lambda seed: cancel_at_random_point(server.stub, seed), range(200)))
    idle = wait_idle(server.stub)
    assert (idle.num_running, idle.num_waiting) == (0, 0)
    assert idle.num_free_device_blocks == idle.num_device_blocks == 512
    assert idle.is_integrity_ok
    tokens, _, _ = collect(server.stub, make_request([1, 2, 3], 8))
    assert len(tokens) == 8


BAD_REQUESTS = [
    ("empty text", make_request(""), "empty"),
    ("no input", generation_pb2.GenerateRequest(), "set `text` or `tokens`"),
    ("empty ids", make_request([]), "empty"),
    ("too long", make_request([1] * 1000, 100), "exceeds the model's max length 1024"),
    ("temperature", make_request([1], sampling=common_pb2.SamplingParams(temperature=-0.5)),
     "temperature = -0.5: must be >= 0"),
    ("top_p zero", make_request([1], sampling=common_pb2.SamplingParams(top_p=0.0)), "top_p = 0.0"),
    ("top_p big", make_request([1], sampling=common_pb2.SamplingParams(top_p=1.5)), "(0, 1]"),
    ("top_k", make_request([1], sampling=common_pb2.SamplingParams(top_k=-1)), "top_k = -1"),
    ("max_tokens 0", make_request([1], 0), "max_tokens = 0: must be >= 1"),
    ("vocab", make_request([1, 512]), "tokens.ids[1] = 512"),
    ("logprobs", make_request([1], sampling=common_pb2.SamplingParams(logprobs=21)), "at most 20"),
    ("penalty", make_request([1], sampling=common_pb2.SamplingParams(repetition_penalty=0.0)),
     "repetition_penalty = 0.0: must be > 0"),
]


@pytest.mark.parametrize("name,request_message,message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_invalid_argument_then_serving_continues(server, name, request_message, message):
    with pytest.raises(grpc.RpcError) as caught:
        collect(server.stub, request_message)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    tokens, _, _ = collect(server.stub, make_request([1, 2, 3], 3))
    assert len(tokens) == 3


NAN, INF = float("nan"), float("inf")
OUT_OF_BOUNDS = [
    ("presence nan", {"presence_penalty": NAN}, "sampling.presence_penalty = nan: must be in [-2, 2]"),
    ("presence -1e30", {"presence_penalty": -1e30}, "presence_penalty = -1.0000000150474662e+30: must be in [-2, 2]"),
    ("frequency inf", {"frequency_penalty": INF}, "sampling.frequency_penalty = inf: must be in [-2, 2]"),
    ("repetition inf", {"repetition_penalty": INF}, "sampling.repetition_penalty = inf: must be > 0 and finite"),
    ("temperature inf", {"temperature": INF}, "sampling.temperature = inf: must be >= 0 and finite"),
    ("top_p nan", {"top_p": NAN}, "sampling.top_p = nan: must be in (0, 1]"),
    ("min_p nan", {"min_p": NAN}, "sampling.min_p = nan: must be in [0, 1]"),
]
OVER_THE_CAPS = [
    ("65 stop strings", make_request([1], stopping=generation_pb2.StoppingCriteria(stop=["zq"] * 65)),
     "stopping.stop has 65 strings: at most 64"),
    ("long stop string", make_request([1], stopping=generation_pb2.StoppingCriteria(stop=["a", "z" * 257])),
     "stopping.stop[1] is 257 characters long: at most 256"),
    ("long request_id", make_request([1], request_id="r" * 257), "request_id is 257 characters long: at most 256"),
    ("long cache_salt", make_request([1], cache_salt="s" * 257), "cache_salt is 257 characters long: at most 256"),
]
BOUNDS_CASES = [(name, make_request([1], sampling=common_pb2.SamplingParams(**fields)), message)
                for name, fields, message in OUT_OF_BOUNDS] + OVER_THE_CAPS


@pytest.fixture(scope="module")
def greedy_reference(server):
    """A normal greedy request's tokens, computed once per server."""
    return collect(server.stub, make_request([5, 6, 7], 12))[0]


def assert_refused_then_same_greedy_tokens(server, greedy_reference, call, message):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    assert collect(server.stub, make_request([5, 6, 7], 12))[0] == greedy_reference


@pytest.mark.parametrize("name,request_message,message", BOUNDS_CASES, ids=[c[0] for c in BOUNDS_CASES])
def test_out_of_bounds_input_is_invalid_argument_then_greedy_tokens_are_unchanged(
        server, greedy_reference, name, request_message, message):
    assert_refused_then_same_greedy_tokens(server, greedy_reference,
                                           lambda: collect(server.stub, request_message), message)


NOT_UTF8 = [
    ("text", "TEXT", b"T\xffXT", "text is not valid UTF-8 (byte 0xff at 1)"),
    ("stop", "STOP", b"ST\xc3P", "stopping.stop[1] is not valid UTF-8 (byte 0xc3 at 2)"),
    ("request_id", "ID__", b"\x80D__", "request_id is not valid UTF-8 (byte 0x80 at 0)"),
    ("cache_salt", "SALT", b"SA\xed\xa0", "cache_salt is not valid UTF-8 (byte 0xed at 2)"),
]


@pytest.mark.parametrize("name,placeholder,raw,message", NOT_UTF8, ids=[c[0] for c in NOT_UTF8])
def test_bytes_that_are_not_utf8_are_invalid_argument_naming_the_field(
        server, greedy_reference, name, placeholder, raw, message):
    request_message = make_request("TEXT", request_id="ID__", cache_salt="SALT", stopping=generation_pb2.StoppingCriteria(
        max_tokens=3, stop=["ok", "STOP"]))
    generate = server.channel.unary_stream(
        "/strata.v1.Generation/Generate", response_deserializer=generation_pb2.GenerateResponse.FromString)
    data = with_raw_bytes(request_message, placeholder, raw)
    assert_refused_then_same_greedy_tokens(server, greedy_reference,
                                           lambda: list(generate(data, timeout=60)), message)


def test_tokenize_text_that_is_not_utf8_is_invalid_argument(server, greedy_reference):
    tokenize = server.channel.unary_unary(
        "/strata.v1.Generation/Tokenize", response_deserializer=generation_pb2.TokenizeResponse.FromString)
    data = with_raw_bytes(generation_pb2.TokenizeRequest(text="abcd"), "abcd", b"ab\xfe\xff")
    assert_refused_then_same_greedy_tokens(server, greedy_reference, lambda: tokenize(data, timeout=60),
                                           "text is not valid UTF-8 (byte 0xfe at 2)")


def test_the_most_stop_strings_of_the_longest_length_still_stop_exactly(server):
    tokens, text, _ = collect(server.stub, make_request("x = 1\n", 40))
    stop = text[10:14]
    decoys = ["\u2603" * 256] * 63   # never generated: each is searched after every token
    stopping = generation_pb2.StoppingCriteria(max_tokens=40, stop=decoys + [stop], ignore_eos=True)
    stopped_tokens, stopped_text, last = collect(server.stub, make_request("x = 1\n", stopping=stopping))
    assert stopped_text == text[:text.index(stop)]
    assert last.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert stopped_tokens == tokens[:len(stopped_tokens)] and len(stopped_tokens) < 40
    assert last.usage.completion_tokens == len(stopped_tokens)


def test_duplicate_in_flight_id_is_already_exists(server):
    call = server.stub.Generate(make_request([1, 2, 3], 300, request_id="dup"), timeout=120)
    next(call)
    with pytest.raises(grpc.RpcError) as caught:
        collect(server.stub, make_request([1, 2], 3, request_id="dup"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "'dup' is already in flight" in caught.value.details()
    call.cancel()
    wait_idle(server.stub)
    tokens, _, last = collect(server.stub, make_request([1, 2], 3, request_id="dup"))
    assert len(tokens) == 3 and last.request_id == "dup"


def test_too_many_waiting_is_resource_exhausted(llama_dir):
    with start_daemons(llama_dir, num_device_blocks=64,
                       scheduler_args=("--max-num-seqs", "1", "--max-waiting", "2")) as small:
        calls = [small.stub.Generate(make_request([1, 2, 3], 300), timeout=60) for _ in range(3)]
        next(calls[0])
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as caught:
            collect(small.stub, make_request([1, 2], 3))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit 2" in caught.value.details()
        for call in calls:
            call.cancel()
        wait_idle(small.stub)
        assert len(collect(small.stub, make_request([1, 2], 3))[0]) == 3
