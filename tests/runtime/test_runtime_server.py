"""runtime.server, runtime.token, runtime.listen: the token on every method but health and
reflection, readiness NOT_SERVING until ready, the drain order, listeners on unix and TCP."""
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from runtime.listen import add_listeners, is_local, refuse_remote_plain_tcp
from runtime.server import Health, drain, make_server
from runtime.token import TokenInterceptor

Code = grpc.StatusCode
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TOKEN = "s3cret"
DENIED = (Code.UNAUTHENTICATED, "missing or wrong bearer token: pass the kvstore's --token")


def pages(request: bytes, context):
    yield from (b"p0", b"p1")


def handlers(started: threading.Event, on_return) -> dict:
    """test.Echo: Slow sets `started`, sleeps `request` seconds, then calls on_return()."""
    def slow(request: bytes, context) -> bytes:
        started.set()
        time.sleep(float(request))
        on_return()
        return b"done"
    return {"Slow": grpc.unary_unary_rpc_method_handler(slow),
            "Pages": grpc.unary_stream_rpc_method_handler(pages),
            "Put": grpc.stream_unary_rpc_method_handler(lambda requests, context: b"%d" % len(list(requests)))}


def serve(tmp_path, interceptors=(), started=None, on_return=lambda: None):
    server = make_server(4, interceptors)
    echo = grpc.method_handlers_generic_handler("test.Echo",
                                                handlers(started or threading.Event(), on_return))
    server.add_generic_rpc_handlers([echo])
    health = Health(server, "test.Echo")
    bound = add_listeners(server, ["127.0.0.1:0", f"unix:{tmp_path}/s.sock"])
    server.start()
    return server, health, bound


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def check(channel, service: str):
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=10).status


def statuses_in_process(health: Health) -> list:
    """Liveness and readiness, asked of the servicer itself (the server may be stopped)."""
    return [health.servicer.Check(health_pb2.HealthCheckRequest(service=name), None).status
            for name in ("", "test.Echo")]


def test_the_token_guards_every_method_on_every_listener_but_health_and_reflection(tmp_path):
    server, health, bound = serve(tmp_path, [TokenInterceptor(TOKEN, "kvstore")])
    try:
        for address in bound:   # TCP and the unix socket alike
            with grpc.insecure_channel(address) as channel:
                right, wrong = (("authorization", f"Bearer {TOKEN}"),), (("authorization", "Bearer x"),)
                slow_call = channel.unary_unary("/test.Echo/Slow")
                assert status_of(lambda: slow_call(b"0", timeout=10)) == DENIED
                assert status_of(lambda: slow_call(b"0", metadata=wrong, timeout=10)) == DENIED
                assert slow_call(b"0", metadata=right, timeout=10) == b"done"
                pages_call = channel.unary_stream("/test.Echo/Pages")
                assert status_of(lambda: list(pages_call(b"", timeout=10))) == DENIED
                assert list(pages_call(b"", metadata=right, timeout=10)) == [b"p0", b"p1"]
                put = channel.stream_unary("/test.Echo/Put")
                assert status_of(lambda: put(iter([b"a"]), timeout=10)) == DENIED
                assert put(iter([b"a", b"b"]), metadata=right, timeout=10) == b"2"
                assert check(channel, "") == SERVING
                reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
                replies = reflection.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
                names = [s.name for s in next(replies).list_services_response.service]
                assert names == ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                                 "test.Echo"]
    finally:
        server.stop(0)


def test_readiness_is_not_serving_until_marked_and_liveness_serves_at_once(tmp_path):
    server, health, bound = serve(tmp_path)
    try:
        with grpc.insecure_channel(bound[0]) as channel:
            assert (check(channel, ""), check(channel, "test.Echo")) == (SERVING, NOT_SERVING)
            health.mark_ready()
            assert (check(channel, ""), check(channel, "test.Echo")) == (SERVING, SERVING)
            health.mark_not_ready()
            assert (check(channel, ""), check(channel, "test.Echo")) == (SERVING, NOT_SERVING)
    finally:
        server.stop(0)


def test_drain_goes_not_serving_then_lets_calls_finish_then_closes(tmp_path):
    events, started = [], threading.Event()
    server, health, bound = serve(tmp_path, started=started, on_return=lambda: events.append(
        ("handler returned", statuses_in_process(health))))
    health.mark_ready()
    with grpc.insecure_channel(bound[0]) as channel:
        in_flight = channel.unary_unary("/test.Echo/Slow").future(b"0.5", timeout=10)
        assert started.wait(10)
        drainer = threading.Thread(target=drain, args=(
            server, health, 5.0, lambda: events.append(("closed", statuses_in_process(health)))))
        drainer.start()
        assert in_flight.result() == b"done"   # in flight when the drain began: it finished
        drainer.join(10)
    health.mark_ready()   # ignored once draining
    assert statuses_in_process(health) == [NOT_SERVING, NOT_SERVING]
    assert events == [("handler returned", [NOT_SERVING, NOT_SERVING]),   # draining already
                      ("closed", [NOT_SERVING, NOT_SERVING])]


def test_listeners_report_the_bound_port_and_which_addresses_are_local(tmp_path):
    server = make_server(1)
    bound = add_listeners(server, ["127.0.0.1:0", f"unix:{tmp_path}/a.sock"])
    assert bound[0].startswith("127.0.0.1:") and int(bound[0].rpartition(":")[2]) > 0
    assert bound[1] == f"unix:{tmp_path}/a.sock"
    assert [is_local(a) for a in ("unix:/x", "127.0.0.1:1", "localhost:1", "[::1]:1", "0.0.0.0:1",
                                  "10.0.0.2:1")] == [True, True, True, True, False, False]
    refuse_remote_plain_tcp(["127.0.0.1:1", "unix:/x"], "--tls-cert")
    with pytest.raises(SystemExit, match=r"^refusing plain TCP on 0.0.0.0:7433: give --tls-cert/--tls-key$"):
        refuse_remote_plain_tcp(["127.0.0.1:1", "0.0.0.0:7433"], "--tls-cert/--tls-key")
