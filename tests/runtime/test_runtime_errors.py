"""runtime.errors: one interceptor maps StatusError (and the daemons' subclasses) to its status
on a real in-process server, for unary, server-streaming and client-streaming methods."""
import logging
import threading

import grpc
import pytest

from executor.errors import ArenaError, CheckpointError, PlanError
from kvstore.errors import InvalidArgument, KVStoreError, LeaseNotFound, NoRoom, NotRegistered
from runtime.errors import StatusError
from runtime.server import make_server
from scheduler.errors import AlreadyExists, ApiError, ResourceExhausted, Unavailable

Code = grpc.StatusCode


class Busy(StatusError):
    code = Code.UNAVAILABLE


def unary(request: bytes, context) -> bytes:
    match request:
        case b"ok":
            return b"fine"
        case b"refuse":
            raise StatusError("page_bytes 0: must be positive", Code.INVALID_ARGUMENT)
        case b"busy":
            raise Busy("every slot is pinned: retry")
        case b"abort":
            context.abort(Code.NOT_FOUND, "aborted by the handler")
        case b"rpc":
            raise grpc.RpcError()
    return str(1 // 0).encode()


def server_stream(request: bytes, context):
    yield b"one"
    yield b"two"
    if request == b"late":
        raise StatusError("no room after two pages", Code.RESOURCE_EXHAUSTED)
    if request == b"bug":
        raise KeyError("slot 7")
    yield b"three"


def refusing_before_the_stream(request: bytes, context):
    """Like KVStore.GetPages: checks at once, then returns a generator."""
    raise NoRoom("checked before the stream")


def client_stream(requests, context) -> bytes:
    pages = list(requests)
    if b"bad" in pages:
        raise InvalidArgument(f"page {pages.index(b'bad')} is bad")
    return b"%d" % len(pages)


HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Stream": grpc.unary_stream_rpc_method_handler(server_stream),
    "EarlyStream": grpc.unary_stream_rpc_method_handler(refusing_before_the_stream),
    "Put": grpc.stream_unary_rpc_method_handler(client_stream),
}


@pytest.fixture(scope="module")
def channel():
    server = make_server(4)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", HANDLERS)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    server.stop(0)


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def test_unary_status_errors_become_their_status(channel):
    call = channel.unary_unary("/test.Echo/Unary")
    assert call(b"ok", timeout=10) == b"fine"
    assert status_of(lambda: call(b"refuse", timeout=10)) == \
        (Code.INVALID_ARGUMENT, "page_bytes 0: must be positive")
    assert status_of(lambda: call(b"busy", timeout=10)) == (Code.UNAVAILABLE, "every slot is pinned: retry")
    assert status_of(lambda: call(b"abort", timeout=10)) == (Code.NOT_FOUND, "aborted by the handler")


def test_an_unexpected_exception_is_internal_and_logged(channel, caplog):
    call = channel.unary_unary("/test.Echo/Unary")
    with caplog.at_level(logging.ERROR, logger="runtime.errors"):
        assert status_of(lambda: call(b"crash", timeout=10)) == \
            (Code.INTERNAL, "ZeroDivisionError: integer division or modulo by zero")
    assert [r.getMessage() for r in caplog.records if r.name == "runtime.errors"] == \
        ["/test.Echo/Unary failed"]
    assert status_of(lambda: call(b"rpc", timeout=10))[0] == Code.UNKNOWN   # gRPC's own status
    assert call(b"ok", timeout=10) == b"fine"   # still serving


def test_a_server_stream_gets_its_status_after_the_replies_sent(channel):
    call = channel.unary_stream("/test.Echo/Stream")
    assert list(call(b"all", timeout=10)) == [b"one", b"two", b"three"]
    received = []

    def read(request: bytes):
        for reply in call(request, timeout=10):
            received.append(reply)
    assert status_of(lambda: read(b"late")) == (Code.RESOURCE_EXHAUSTED, "no room after two pages")
    assert received == [b"one", b"two"]
    received.clear()
    assert status_of(lambda: read(b"bug")) == (Code.INTERNAL, "KeyError: 'slot 7'")
    assert received == [b"one", b"two"]


def test_a_stream_refused_before_its_first_reply(channel):
    call = channel.unary_stream("/test.Echo/EarlyStream")
    assert status_of(lambda: list(call(b"x", timeout=10))) == \
        (Code.RESOURCE_EXHAUSTED, "checked before the stream")


def test_a_client_stream_gets_its_status(channel):
    call = channel.stream_unary("/test.Echo/Put")
    assert call(iter([b"a", b"b"]), timeout=10) == b"2"
    assert status_of(lambda: call(iter([b"a", b"bad"]), timeout=10)) == (Code.INVALID_ARGUMENT, "page 1 is bad")


def test_concurrent_calls_keep_their_own_status(channel):
    call = channel.unary_unary("/test.Echo/Unary")
    results = [None] * 8

    def one(i: int) -> None:
        results[i] = status_of(lambda: call(b"busy", timeout=10)) if i % 2 else call(b"ok", timeout=10)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [b"fine", (Code.UNAVAILABLE, "every slot is pinned: retry")] * 4


@pytest.mark.parametrize("error_class, code", [
    (StatusError, Code.INTERNAL), (KVStoreError, Code.INTERNAL),
    (InvalidArgument, Code.INVALID_ARGUMENT), (NotRegistered, Code.FAILED_PRECONDITION),
    (LeaseNotFound, Code.NOT_FOUND), (NoRoom, Code.RESOURCE_EXHAUSTED),
    (ApiError, Code.INVALID_ARGUMENT), (AlreadyExists, Code.ALREADY_EXISTS),
    (ResourceExhausted, Code.RESOURCE_EXHAUSTED), (Unavailable, Code.UNAVAILABLE),
    (PlanError, Code.INVALID_ARGUMENT), (ArenaError, Code.FAILED_PRECONDITION),
])
def test_every_daemon_error_is_a_status_error_with_its_code(error_class, code):
    error = error_class("what to change")
    assert isinstance(error, StatusError)
    assert (error.code, error.message, str(error)) == (code, "what to change", "what to change")


def test_daemon_errors_keep_their_builtin_bases():
    assert isinstance(PlanError("x"), ValueError) and isinstance(ArenaError("x"), OSError)
    assert not issubclass(CheckpointError, StatusError)   # a load-time error, never a status
    assert StatusError("x", Code.ABORTED).code == Code.ABORTED and StatusError.code == Code.INTERNAL
