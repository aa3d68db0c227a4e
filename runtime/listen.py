"""Binding a daemon's gRPC server to its listen addresses: unix sockets and TCP, TLS optional.

gRPC servers set SO_REUSEPORT by default, so a second server on a TCP port that one already
serves binds too and the kernel splits new connections between the two (seen: 27/13). Every
Strata server turns it off (SERVER_OPTIONS) and bind() turns a failed bind into an exit that says
which address is taken.

With TLS credentials every TCP listener is TLS and unix sockets stay plain (only local processes
reach them; file permissions guard them). A bearer token (runtime.token) covers every listener.
"""
from __future__ import annotations

import argparse

import grpc

SERVER_OPTIONS = [("grpc.so_reuseport", 0)]
# The internal links (scheduler <-> executor, kvstore clients) carry whole messages up to this:
# gRPC's 4 MiB default is too small for a plan of 256 full 4k-token prompts or a 4 MiB page.
# Both ends of a link use MESSAGE_OPTIONS; the public Generation API keeps gRPC's default.
MAX_MESSAGE_BYTES = 256 << 20
MESSAGE_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
# A client reconnects within a couple of seconds of a restarted daemon (gRPC's default backoff
# grows to 2 minutes: a scheduler whose executor died while starting waited that long).
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)]


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
    if is_unix(address):
        raise SystemExit(f"cannot listen on {address}: its directory must exist and be writable, "
                         "and the path at most 107 bytes long")
    raise SystemExit(f"cannot listen on {address}: the address is in use (another server on that port?) "
                     "or not an address of this host; stop the other server or pick another port")


def is_unix(address: str) -> bool:
    return address.startswith("unix:")


def is_local(address: str) -> bool:
    """A unix socket or a loopback TCP address: only this host reaches it."""
    host = address.rpartition(":")[0].strip("[]")
    return is_unix(address) or host in ("127.0.0.1", "localhost", "::1")


def server_credentials(cert_path: str, key_path: str) -> grpc.ServerCredentials:
    """TLS credentials from a PEM certificate (chain) and its private key."""
    with open(key_path, "rb") as key, open(cert_path, "rb") as cert:
        return grpc.ssl_server_credentials([(key.read(), cert.read())])


def refuse_remote_plain_tcp(addresses: list[str], flags: str) -> None:
    """SystemExit naming the first address other hosts could reach over plain TCP; `flags` says
    how to serve it anyway (TLS, or an explicit opt-in)."""
    for address in addresses:
        if not is_local(address):
            raise SystemExit(f"refusing plain TCP on {address}: give {flags}")


def add_listeners(server: grpc.Server, addresses: list[str],
                  credentials: grpc.ServerCredentials | None = None) -> list[str]:
    """Bind every address (TCP with `credentials` when given); returns them as bound: a port 0
    replaced by the port the kernel chose, unix sockets as given."""
    bound = []
    for address in addresses:
        if is_unix(address):
            bind(server, address)
            bound.append(address)
        else:
            port = bind(server, address, credentials)
            bound.append(f"{address.rpartition(':')[0]}:{port}")
    return bound


# ---- a public port's flags: TLS, or plain TCP on loopback unless --insecure -------------------

PLAIN_TCP_FLAGS = "--tls-cert PEM --tls-key PEM (or --insecure to serve plain TCP to other hosts)"


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-cert", default=None, help="PEM certificate (chain): TLS on every TCP listener")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    parser.add_argument("--insecure", action="store_true",
                        help="allow plain TCP on an address other hosts reach (a trusted network only)")


def check_tls_flags(args: argparse.Namespace, addresses: list[str]) -> None:
    """SystemExit unless --tls-cert and --tls-key come together, and unless every plain TCP
    address is loopback or --insecure was given."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("give --tls-cert and --tls-key together")
    if not args.tls_cert and not args.insecure:
        refuse_remote_plain_tcp(addresses, PLAIN_TCP_FLAGS)


def add_public_listeners(server: grpc.Server, args: argparse.Namespace, addresses: list[str]) -> list[str]:
    """check_tls_flags, then bind every address (TCP ones with TLS when --tls-cert is given)."""
    check_tls_flags(args, addresses)
    credentials = server_credentials(args.tls_cert, args.tls_key) if args.tls_cert else None
    return add_listeners(server, addresses, credentials)
