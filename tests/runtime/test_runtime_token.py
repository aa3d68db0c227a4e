"""runtime.token beyond the interceptor: a client channel that presents the token on every call
shape, the 0600 token file, and a daemon's rule (a token from --token-file or its own flag, none
only with --insecure."""
import argparse
import os
import stat

import grpc
import pytest

from runtime.server import make_server
from runtime.token import (TokenInterceptor, add_token_flags, read_token_file, required_token,
                           with_token, write_token_file)

TOKEN = "s3cret"


@pytest.fixture
def echo(tmp_path):
    """test.Echo on a unix socket, every method behind TOKEN."""
    handlers = {
        "One": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
        "Many": grpc.unary_stream_rpc_method_handler(lambda request, context: iter([request, request])),
        "Sum": grpc.stream_unary_rpc_method_handler(lambda requests, context: b"".join(requests)),
        "Both": grpc.stream_stream_rpc_method_handler(lambda requests, context: iter(list(requests))),
    }
    server = make_server(2, [TokenInterceptor(TOKEN, "executor", "--token-file")])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", handlers)])
    server.add_insecure_port(f"unix:{tmp_path}/e.sock")
    server.start()
    yield f"unix:{tmp_path}/e.sock"
    server.stop(0)


def calls(channel: grpc.Channel) -> list:
    return [channel.unary_unary("/test.Echo/One")(b"a", timeout=10),
            list(channel.unary_stream("/test.Echo/Many")(b"b", timeout=10)),
            channel.stream_unary("/test.Echo/Sum")(iter([b"c", b"d"]), timeout=10),
            list(channel.stream_stream("/test.Echo/Both")(iter([b"e"]), timeout=10))]


def test_with_token_presents_the_token_on_every_call_shape(echo):
    with grpc.insecure_channel(echo) as channel:
        assert calls(with_token(channel, TOKEN)) == [b"a", [b"b", b"b"], b"cd", [b"e"]]
        with pytest.raises(grpc.RpcError) as error:
            calls(with_token(channel, "wrong"))
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.value.details() == "missing or wrong bearer token: pass the executor's --token-file"
        assert with_token(channel, None) is channel


def test_token_file_is_private_and_read_back_without_whitespace(tmp_path):
    path = tmp_path / "t"
    write_token_file(path, TOKEN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and read_token_file(path) == TOKEN
    write_token_file(path, "other")   # replaced whole
    assert read_token_file(path) == "other" and os.listdir(tmp_path) == ["t"]
    with pytest.raises(SystemExit, match=f"cannot read the token file {tmp_path}/missing: No such file"):
        read_token_file(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SystemExit, match="is empty"):
        read_token_file(tmp_path / "empty")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_token_flags(parser, "no token")
    return parser.parse_args(argv)


def test_a_daemon_requires_a_token_unless_told_insecure(tmp_path):
    write_token_file(tmp_path / "t", TOKEN)
    assert required_token(parse("--token-file", str(tmp_path / "t")), "executor", "flag") == TOKEN
    assert required_token(parse(), "kvstore", "flag") == "flag"
    assert required_token(parse("--insecure"), "executor") is None
    with pytest.raises(SystemExit) as refusal:
        required_token(parse(), "executor")
    assert str(refusal.value).startswith("strata executor: refusing to serve without a token: pass "
                                         "--token-file PATH")
    assert "or --insecure" in str(refusal.value)
