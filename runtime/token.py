"""The internal bearer token: what a daemon requires on every method but health and reflection
(probes work without the secret; the token covers every listener, unix sockets included), how a
client presents it, and the token file both sides read.

    server   make_server(n, token_interceptors(token, "executor", "--token-file"))
    client   grpc.insecure_channel(...) -> with_token(channel, token); or metadata=bearer_metadata(token)
    file     write_token_file(path, new_token())  -> a 0600 file; read_token_file(path)
"""
from __future__ import annotations

import argparse
import collections
import hmac
import os
import secrets
from typing import Callable

import grpc

from runtime.errors import handler_kind

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
TOKEN_BYTES = 32


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents `token` (none without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


class BearerInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED with `message` unless the call's `authorization` metadata is accepted by
    is_accepted(value as bytes); health and reflection are always open (probes need no secret)."""

    def __init__(self, is_accepted: Callable[[bytes], bool], message: str) -> None:
        self.is_accepted = is_accepted
        self.message = message

    def is_allowed(self, handler_call_details) -> bool:
        if handler_call_details.method.startswith(OPEN_SERVICES):
            return True
        return self.is_accepted(authorization(handler_call_details.invocation_metadata))

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or self.is_allowed(handler_call_details):
            return handler

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, self.message)
        return handler._replace(**{handler_kind(handler): deny})


def authorization(metadata) -> bytes:
    """The `authorization` value of a call's metadata, as bytes (b"" when absent)."""
    presented = dict(metadata or ()).get("authorization", "")
    return presented.encode() if isinstance(presented, str) else presented


class TokenInterceptor(BearerInterceptor):
    """UNAUTHENTICATED unless the call sends `authorization: Bearer <token>` (compared in
    constant time). `server_name` and `flag` name where the token comes from in the message
    ("pass the kvstore's --token")."""

    def __init__(self, token: str, server_name: str, flag: str = "--token") -> None:
        expected = bearer_metadata(token)[0][1].encode()
        super().__init__(lambda presented: hmac.compare_digest(presented, expected),
                         f"missing or wrong bearer token: pass the {server_name}'s {flag}")


def token_interceptors(token: str | None, server_name: str, flag: str) -> list[grpc.ServerInterceptor]:
    """[TokenInterceptor] when the daemon requires a token, else none (it was given --insecure)."""
    return [TokenInterceptor(token, server_name, flag)] if token else []


# ---- the client side ----------------------------------------------------------------------

class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
        grpc.ClientCallDetails):
    pass


class _BearerClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                               grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the bearer token to every call of the channel it wraps, whatever its shape."""

    def __init__(self, token: str) -> None:
        self.metadata = bearer_metadata(token)

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(details.method, details.timeout, (*(details.metadata or ()), *self.metadata),
                            details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    intercept_unary_stream = intercept_unary_unary

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    intercept_stream_stream = intercept_stream_unary


def with_token(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """`channel` presenting `token` on every call (the channel itself without a token)."""
    return grpc.intercept_channel(channel, _BearerClientInterceptor(token)) if token else channel


# ---- the token file -----------------------------------------------------------------------

def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def write_token_file(path: str | os.PathLike, token: str) -> None:
    """Write `token` to `path` as a file only this user may read or write (0600), replacing it
    at once (a reader sees the old token or the new one, never half of one)."""
    partial = f"{os.fspath(path)}.{os.getpid()}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)   # a stale partial file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    os.replace(partial, path)


def read_token_file(path: str | os.PathLike) -> str:
    """The token in `path` (surrounding whitespace dropped); SystemExit saying why when it cannot
    be read or holds nothing."""
    try:
        with open(path) as file:
            token = file.read().strip()
    except OSError as error:
        raise SystemExit(f"cannot read the token file {path}: {error.strerror}") from error
    if not token:
        raise SystemExit(f"the token file {path} is empty: write a token into it (`strata token {path}`)")
    return token


# ---- a daemon's flags ---------------------------------------------------------------------

def add_token_flags(parser: argparse.ArgumentParser, insecure_help: str) -> None:
    parser.add_argument("--token-file", default=None,
                        help="file holding the bearer token every call but health and reflection "
                             "must send (`strata token PATH` writes one)")
    parser.add_argument("--insecure", action="store_true", help=insecure_help)


def required_token(args: argparse.Namespace, daemon: str, token: str | None = None) -> str | None:
    """The token a daemon requires: --token-file's, else `token` (a flag or environment value
    of its own); None only with --insecure. SystemExit saying what to pass otherwise."""
    if args.token_file:
        return read_token_file(args.token_file)
    if token or args.insecure:
        return token or None
    raise SystemExit(f"strata {daemon}: refusing to serve without a token: pass --token-file PATH "
                     "(the file the scheduler's --internal-token-file names; `strata token PATH` writes "
                     "one), or --insecure to let every process that reaches the listener call it")
