"""A KVStore gRPC server over a Store in the test's own process (threads)."""
import grpc

from kvstore.daemon import build_server
from kvstore.store import Store


def serve_in_process(store: Store, address: str, token: str | None = None) -> grpc.Server:
    """A KVStore server over `store` in this process (threads), on a unix socket or port."""
    class Args:
        pass
    args = Args()
    args.token = token
    server, _ = build_server(store, args)
    server.add_insecure_port(address)
    server.start()
    return server
