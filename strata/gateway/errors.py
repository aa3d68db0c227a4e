"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, with their status.

Every failure a client can see goes through ApiError: refused fields, gRPC statuses of the
scheduler (mapped by `from_rpc_error`), an aborted generation.
"""
from __future__ import annotations

import re

import grpc

# gRPC status -> (HTTP status, OpenAI error type)
RPC_STATUSES = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
}

# The scheduler names a bad field as "sampling.top_p = 2.0: ..." or "stopping.max_tokens ...":
# OpenAI's `param` is the request's own name for it.
PROTO_FIELD = re.compile(r"^(?:sampling|stopping)\.(\w+)")


class ApiError(Exception):
    """A request the gateway answers with `status` and OpenAI's error body."""

    def __init__(self, status: int, message: str, error_type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param, code)


def from_rpc_error(error: grpc.RpcError) -> ApiError:
    """The scheduler's status as the HTTP error a client of OpenAI's API expects (500 otherwise)."""
    code = error.code()
    status, error_type = RPC_STATUSES.get(code, (500, "server_error"))
    details = error.details() or code.name
    field = PROTO_FIELD.match(details)
    return ApiError(status, details, error_type, field.group(1) if field else None, code.name.lower())


def aborted() -> ApiError:
    """An aborted generation is an error, never a normal finish (the text would be cut short)."""
    return ApiError(500, "the server aborted the generation (it could not finish it); retry",
                    "server_error", code="aborted")


def from_validation_errors(errors: list[dict]) -> ApiError:
    """FastAPI's request-validation errors (its 422) as one 400 naming the first bad field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return bad_request(f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": "))
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    if first.get("type") == "extra_forbidden":
        message = f"{param}: this field is not supported by this server"
    else:
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    return bad_request(message, param)
