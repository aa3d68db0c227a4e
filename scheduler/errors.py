"""The API errors a request can get; the runtime's interceptor maps each to its gRPC status."""
from __future__ import annotations

import grpc

from runtime.errors import InvalidArgument, StatusError

__all__ = ["ApiError", "InvalidArgument", "AlreadyExists", "ResourceExhausted", "Unavailable"]


class ApiError(StatusError):
    """A request the server refuses; `message` says what to change."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class AlreadyExists(ApiError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(ApiError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ApiError):
    code = grpc.StatusCode.UNAVAILABLE
