"""Errors the kvstore raises for bad input or lack of room; the runtime's interceptor maps each
to its gRPC status."""
import grpc

from runtime.errors import InvalidArgument, StatusError

__all__ = ["KVStoreError", "InvalidArgument", "NotRegistered", "LeaseNotFound", "NoRoom"]


class KVStoreError(StatusError):
    """Base: carries the gRPC status code a client sees, and a message saying what to change."""

    code = grpc.StatusCode.INTERNAL


class NotRegistered(KVStoreError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class LeaseNotFound(KVStoreError):
    code = grpc.StatusCode.NOT_FOUND


class NoRoom(KVStoreError):
    """Backpressure: every slot is pinned or being written; retry after leases complete."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
