"""Requests with bytes that are not UTF-8 in a string field: INVALID_ARGUMENT naming the field
(gRPC's own answer is INTERNAL "Exception deserializing request!")."""
from concurrent import futures

import grpc
import pytest

from protos.v1 import generation_pb2, generation_pb2_grpc
from raw_bytes import with_raw_bytes
from runtime.decoding import DecodeErrorInterceptor, find_bad_utf8

GENERATE = "/strata.v1.Generation/Generate"
TOKENIZE = "/strata.v1.Generation/Tokenize"

FULL = generation_pb2.GenerateRequest(
    request_id="ID__", text="TEXT", cache_salt="SALT",
    stopping=generation_pb2.StoppingCriteria(stop=["ok", "STOP"], max_tokens=3))

BAD_BYTES = [
    ("TEXT", b"T\xffXT", "text is not valid UTF-8 (byte 0xff at 1)"),
    ("STOP", b"ST\xc3P", "stopping.stop[1] is not valid UTF-8 (byte 0xc3 at 2)"),
    ("ID__", b"\x80D__", "request_id is not valid UTF-8 (byte 0x80 at 0)"),
    ("SALT", b"SA\xed\xa0", "cache_salt is not valid UTF-8 (byte 0xed at 2)"),   # a surrogate half
]


@pytest.mark.parametrize("placeholder,raw,message", BAD_BYTES, ids=[b[0] for b in BAD_BYTES])
def test_the_first_string_field_that_is_not_utf8_is_named(placeholder, raw, message):
    data = with_raw_bytes(FULL, placeholder, raw)
    with pytest.raises(Exception):
        generation_pb2.GenerateRequest.FromString(data)   # the premise: protobuf refuses it
    assert find_bad_utf8(generation_pb2.GenerateRequest.DESCRIPTOR, data) == message


def test_valid_or_truncated_data_names_no_field():
    data = FULL.SerializeToString()
    assert find_bad_utf8(generation_pb2.GenerateRequest.DESCRIPTOR, data) is None
    assert find_bad_utf8(generation_pb2.GenerateRequest.DESCRIPTOR, data[:-3]) is None


class EchoService(generation_pb2_grpc.GenerationServicer):
    def Generate(self, request, context):
        yield generation_pb2.GenerateResponse(request_id=request.request_id, text=request.text)

    def Tokenize(self, request, context):
        return generation_pb2.TokenizeResponse(ids=[len(request.text)])


@pytest.fixture(scope="module")
def channel():
    service = generation_pb2.DESCRIPTOR.services_by_name["Generation"]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         interceptors=[DecodeErrorInterceptor(service)])
    generation_pb2_grpc.add_GenerationServicer_to_server(EchoService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as opened:
        yield opened
    server.stop(None)


def test_interceptor_refuses_bad_utf8_in_streaming_and_unary_rpcs_then_serves(channel):
    generate = channel.unary_stream(GENERATE, response_deserializer=generation_pb2.GenerateResponse.FromString)
    tokenize = channel.unary_unary(TOKENIZE, response_deserializer=generation_pb2.TokenizeResponse.FromString)
    for placeholder, raw, message in BAD_BYTES:
        with pytest.raises(grpc.RpcError) as caught:
            list(generate(with_raw_bytes(FULL, placeholder, raw), timeout=10))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        tokenize(with_raw_bytes(generation_pb2.TokenizeRequest(text="abcd"), "abcd", b"ab\xfe\xff"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "text is not valid UTF-8 (byte 0xfe at 2)" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        tokenize(b"\x0a\x05ab", timeout=10)   # a length past the end: not a field, a broken message
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid strata.v1.TokenizeRequest" in caught.value.details()
    (echoed,) = generate(FULL.SerializeToString(), timeout=10)
    assert (echoed.request_id, echoed.text) == ("ID__", "TEXT")
    assert tokenize(generation_pb2.TokenizeRequest(text="日本").SerializeToString(), timeout=10).ids == [2]


def test_a_message_of_very_many_fields_is_not_walked_to_the_end():
    many = generation_pb2.GenerateRequest(priority=1).SerializeToString() * 20_000
    data = many + with_raw_bytes(generation_pb2.GenerateRequest(text="TEXT"), "TEXT", b"T\xffXT")
    assert find_bad_utf8(generation_pb2.GenerateRequest.DESCRIPTOR, data) is None
    assert find_bad_utf8(generation_pb2.GenerateRequest.DESCRIPTOR, data[len(many) - 10:]) is not None
