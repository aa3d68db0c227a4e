"""Binding a daemon's gRPC server to its listen address (shared by the three daemons).

gRPC servers set SO_REUSEPORT by default, so a second server on a TCP port that one already
serves binds too and the kernel splits new connections between the two (seen: 27/13). Every
Strata server turns it off (SERVER_OPTIONS) and bind() turns a failed bind into an exit that says
which address is taken.
"""
from __future__ import annotations

import grpc

SERVER_OPTIONS = [("grpc.so_reuseport", 0)]


def bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """Add the listener; returns its port (1 for a unix socket). SystemExit if the address is
    taken or cannot be bound."""
    try:
        port = server.add_insecure_port(address) if credentials is None else \
            server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port:
        return port
    if address.startswith("unix:"):
        raise SystemExit(f"cannot listen on {address}: its directory must exist and be writable, "
                         "and the path at most 107 bytes long")
    raise SystemExit(f"cannot listen on {address}: the address is in use (another server on that port?) "
                     "or not an address of this host; stop the other server or pick another port")
