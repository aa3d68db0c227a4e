"""One status-carrying error and the one server interceptor that maps it, for every RPC shape.

A handler refuses a request by raising StatusError (or a daemon's subclass with its own `code`):

    raise StatusError("the executor is still loading its model; retry", grpc.StatusCode.UNAVAILABLE)
    class NoRoom(KVStoreError): code = grpc.StatusCode.RESOURCE_EXHAUSTED

StatusInterceptor turns it into that status with the message as details, whether the handler
returns a reply (unary), yields replies (server-streaming: also after the first ones were sent)
or reads a request stream. Any other exception becomes INTERNAL "TypeName: message", logged with
its traceback, and the daemon keeps serving. A handler that called context.abort itself, or whose
own outgoing RPC failed (grpc.RpcError), keeps the status gRPC gives it.
"""
from __future__ import annotations

import logging

import grpc

log = logging.getLogger(__name__)

KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def handler_kind(handler: grpc.RpcMethodHandler) -> str:
    """The name of the handler's behaviour field: 'unary_unary' ... 'stream_stream'."""
    return KINDS[2 * handler.request_streaming + handler.response_streaming]


class StatusError(Exception):
    """A request the server refuses: `code` is the status the client sees, the message its
    details (say what to change). Subclasses set `code` once; a given `code` overrides it."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidArgument(StatusError):
    """Bad input, in any daemon: the message names the field and what to change."""

    code = grpc.StatusCode.INVALID_ARGUMENT


def abort_with_status(error: Exception, context: grpc.ServicerContext, method: str) -> None:
    """Raises: `error` as its status (re-raised as it is where gRPC already has one)."""
    if isinstance(error, StatusError):
        context.abort(error.code, str(error))
    if isinstance(error, grpc.RpcError) or context.code() is not None:
        raise error
    log.exception("%s failed", method)
    context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")


def mapping_unary(behaviour, method: str):
    def unary(request, context):
        try:
            return behaviour(request, context)
        except Exception as error:  # noqa: BLE001 - every failure becomes a status
            abort_with_status(error, context, method)
    return unary


def mapping_stream(behaviour, method: str):
    def stream(request, context):
        try:
            yield from behaviour(request, context)
        except Exception as error:  # noqa: BLE001 - every failure becomes a status
            abort_with_status(error, context, method)
    return stream


class StatusInterceptor(grpc.ServerInterceptor):
    """Wraps the handler of every method (unary and streaming replies alike) in the mapping."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        kind = handler_kind(handler)
        wrap = mapping_stream if handler.response_streaming else mapping_unary
        return handler._replace(**{kind: wrap(getattr(handler, kind), method)})
