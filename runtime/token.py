"""A bearer token on every method of a daemon's services; health and reflection stay open so
probes work without the secret. The token covers every listener, unix sockets included."""
from __future__ import annotations

import hmac

import grpc

from runtime.errors import handler_kind

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class TokenInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED unless the call sends `authorization: Bearer <token>` (compared in
    constant time). `server_name` names the daemon in the message ("pass the kvstore's --token")."""

    def __init__(self, token: str, server_name: str) -> None:
        self.expected = f"Bearer {token}".encode()
        self.message = f"missing or wrong bearer token: pass the {server_name}'s --token"

    def is_allowed(self, handler_call_details) -> bool:
        if handler_call_details.method.startswith(OPEN_SERVICES):
            return True
        metadata = dict(handler_call_details.invocation_metadata or ())
        presented = metadata.get("authorization", "")
        presented = presented.encode() if isinstance(presented, str) else presented
        return hmac.compare_digest(presented, self.expected)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or self.is_allowed(handler_call_details):
            return handler

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, self.message)
        return handler._replace(**{handler_kind(handler): deny})
