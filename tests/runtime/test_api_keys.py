"""runtime.api_keys: the key file's format and refusals, the interceptor on a real in-process
server (exact code and message; health open), and the cache salt a key gives its requests."""
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.api_keys import DENIED, ApiKey, ApiKeys, load_api_keys, parse_key_lines, read_key_file
from runtime.server import Health, make_server


def test_key_lines_are_a_key_and_an_optional_salt_comments_and_blanks_skipped():
    text = "# KEY  SALT\n\nk-alice   tenant-a\n  k-ops\n"
    assert parse_key_lines(text, "keys") == [ApiKey("k-alice", "tenant-a"), ApiKey("k-ops", "")]


def test_key_file_refusals_name_the_file_and_the_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^keys:2: expected `KEY \[CACHE_SALT\]`, got 3 fields$"):
        parse_key_lines("a\nb salt extra\n", "keys")
    with pytest.raises(SystemExit, match=r"^keys:3: this key is already on an earlier line$"):
        parse_key_lines("a\nb\na other\n", "keys")
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(SystemExit, match=f"^the API key file {tmp_path}/empty holds no key: write one key a line$"):
        read_key_file(tmp_path / "empty")
    with pytest.raises(SystemExit, match=f"^cannot read the API key file {tmp_path}/missing: No such file"):
        read_key_file(tmp_path / "missing")


def test_the_environment_key_joins_the_files_keys_once(tmp_path):
    (tmp_path / "keys").write_text("k1 s1\n")
    assert load_api_keys(str(tmp_path / "keys"), "k2").keys == [
        (b"Bearer k1", ApiKey("k1", "s1")), (b"Bearer k2", ApiKey("k2", ""))]
    assert [key for _, key in load_api_keys(str(tmp_path / "keys"), "k1").keys] == [ApiKey("k1", "s1")]
    assert not load_api_keys(None, None).is_required() and load_api_keys(None, None).interceptors() == []


def test_cache_salt_binds_the_keys_salt_before_the_requests():
    keys = ApiKeys([ApiKey("ka", "tenant-a"), ApiKey("kb", "")])
    assert keys.cache_salt([("authorization", "Bearer ka")], "s") == "8:tenant-a:s"
    assert keys.cache_salt([("authorization", "Bearer kb")], "8:tenant-a:s") == "0::8:tenant-a:s"
    assert ApiKeys([]).cache_salt([], "s") == "s"   # no keys: the request's salt as before


@pytest.fixture
def echo(tmp_path):
    """test.Echo (unary and streaming) behind two keys, with health, on a unix socket."""
    handlers = {"One": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
                "Many": grpc.unary_stream_rpc_method_handler(lambda request, context: iter([request] * 2))}
    server = make_server(2, ApiKeys([ApiKey("ka", "tenant-a"), ApiKey("kb", "")]).interceptors())
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", handlers)])
    Health(server, "test.Echo").mark_ready()
    server.add_insecure_port(f"unix:{tmp_path}/e.sock")
    server.start()
    with grpc.insecure_channel(f"unix:{tmp_path}/e.sock") as channel:
        yield channel
    server.stop(0)


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),), (("authorization", "ka"),),
                                      (("authorization", "Bearer ka "),)])
def test_a_call_without_a_listed_key_is_unauthenticated_and_told_what_to_send(echo, metadata):
    for call in (lambda: echo.unary_unary("/test.Echo/One")(b"a", metadata=metadata, timeout=10),
                 lambda: list(echo.unary_stream("/test.Echo/Many")(b"a", metadata=metadata, timeout=10))):
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.value.details() == DENIED
    assert DENIED == ("missing or wrong API key: send the metadata `authorization: Bearer <key>` with a "
                      "key of the scheduler's --api-key-file or $STRATA_API_KEY")


def test_every_listed_key_is_let_through_and_health_needs_none(echo):
    for key in ("ka", "kb"):
        metadata = (("authorization", f"Bearer {key}"),)
        assert echo.unary_unary("/test.Echo/One")(b"a", metadata=metadata, timeout=10) == b"a"
        assert list(echo.unary_stream("/test.Echo/Many")(b"b", metadata=metadata, timeout=10)) == [b"b", b"b"]
    reply = health_pb2_grpc.HealthStub(echo).Check(health_pb2.HealthCheckRequest(service="test.Echo"), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
