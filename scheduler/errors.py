"""One mapping from API errors to gRPC statuses, applied by a decorator on every RPC."""
from __future__ import annotations

import functools
import inspect
import logging

import grpc

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the server refuses; `message` says what to change."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(ApiError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class AlreadyExists(ApiError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(ApiError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ApiError):
    code = grpc.StatusCode.UNAVAILABLE


def maps_api_errors(method):
    """Turn ApiError raised by a unary or server-streaming RPC into its status + message."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream_wrapper(self, request, context):
            try:
                yield from method(self, request, context)
            except ApiError as error:
                context.abort(error.code, error.message)
        return stream_wrapper

    @functools.wraps(method)
    def unary_wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ApiError as error:
            context.abort(error.code, error.message)
    return unary_wrapper
