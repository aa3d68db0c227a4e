"""`strata kvstore`: run the kvstore daemon.

    strata kvstore --ram 4GiB --disk DIR --disk-size 50GiB [--backing ADDR] [--listen ADDR]
"""
import argparse
import logging
import os
import sys

import grpc
import prometheus_client

from kvstore.disk import FsyncMode
from kvstore.service import SERVICE_NAME, KVStoreService
from kvstore.store import Store, StoreConfig
from protos.v1 import kvstore_pb2, kvstore_pb2_grpc
from runtime.arenas import DEFAULT_ARENA_DIR
from runtime.decoding import DecodeErrorInterceptor
from runtime.kvstore_client import KVStoreClient
from runtime.listen import (MESSAGE_OPTIONS, add_listeners, refuse_remote_plain_tcp,
                            server_credentials)
from runtime.logs import configure_logging
from runtime.server import Health, drain, make_server, stop_on_signals
from runtime.sizes import parse_size
from runtime.token import add_token_flags, required_token, token_interceptors

log = logging.getLogger("strata.kvstore")
DEFAULT_LISTEN = "127.0.0.1:50053"
GRACE_SECONDS = 5.0
TOKEN_ENV = "STRATA_KVSTORE_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="strata kvstore", description=__doc__.splitlines()[0])
    parser.add_argument("--ram", type=parse_size, default=parse_size("1GiB"),
                        help="RAM tier capacity (shared-memory arena), e.g. 4GiB")
    parser.add_argument("--shm-dir", default=DEFAULT_ARENA_DIR,
                        help="where arena files are created (the executor's --arena-dir)")
    parser.add_argument("--disk", default=None, help="NVMe tier directory (off when absent)")
    parser.add_argument("--disk-size", type=parse_size, default=parse_size("50GiB"))
    parser.add_argument("--fsync", choices=[m.value for m in FsyncMode], default="batch")
    parser.add_argument("--write-through", action="store_true",
                        help="copy each stored page to the lower tiers at once (default: on eviction)")
    parser.add_argument("--policy", choices=["lru", "fifo"], default="lru")
    parser.add_argument("--lease-ttl", type=float, default=30.0, help="seconds")
    parser.add_argument("--backing", default=None, help="HOST:PORT of the kvstore below this one")
    parser.add_argument("--backing-ca", default=None, help="CA cert (PEM) to reach it over TLS")
    parser.add_argument("--backing-token", default=os.environ.get("STRATA_KVSTORE_BACKING_TOKEN"))
    parser.add_argument("--listen", action="append", default=None,
                        help=f"HOST:PORT or unix:PATH, repeatable (default {DEFAULT_LISTEN})")
    parser.add_argument("--tls-cert", default=None)
    parser.add_argument("--tls-key", default=None)
    parser.add_argument("--token", default=None,
                        help="bearer token clients must send (env STRATA_KVSTORE_TOKEN); or --token-file")
    add_token_flags(parser, "serve without a token, and plain TCP off loopback: every process that "
                            "reaches a listener may store and read pages (a trusted network only)")
    parser.add_argument("--plain-tcp", action="store_true",
                        help="allow a non-loopback TCP listener without TLS (a private network such "
                             "as compose's); the token still guards every call")
    return parser


def kvstore_token(args: argparse.Namespace) -> str | None:
    """--token-file's or --token's (else STRATA_KVSTORE_TOKEN's) token; None only with --insecure."""
    if args.token and args.token_file:
        raise SystemExit("strata kvstore: give --token or --token-file, not both")
    return required_token(args, "kvstore", args.token or os.environ.get(TOKEN_ENV))


def bind_listeners(server: grpc.Server, args: argparse.Namespace) -> list[str]:
    """Every --listen address; TCP ones use TLS when --tls-cert/--tls-key are given."""
    addresses = args.listen or [DEFAULT_LISTEN]
    if not (args.tls_cert and args.tls_key):
        if not (args.insecure or args.plain_tcp):
            refuse_remote_plain_tcp(addresses, "--tls-cert/--tls-key (or --plain-tcp on a private network)")
        return add_listeners(server, addresses)
    return add_listeners(server, addresses, server_credentials(args.tls_cert, args.tls_key))


def open_backing(args: argparse.Namespace) -> KVStoreClient | None:
    if args.backing is None:
        return None
    ca_pem = open(args.backing_ca, "rb").read() if args.backing_ca else None
    return KVStoreClient(args.backing, token=args.backing_token, ca_pem=ca_pem)


def build_server(store: Store, args: argparse.Namespace) -> tuple[grpc.Server, Health]:
    undecodable = DecodeErrorInterceptor(kvstore_pb2.DESCRIPTOR.services_by_name["KVStore"])
    server = make_server(16, [*token_interceptors(args.token, "kvstore", "--token"), undecodable],
                         MESSAGE_OPTIONS)
    kvstore_pb2_grpc.add_KVStoreServicer_to_server(KVStoreService(store), server)
    return server, Health(server, SERVICE_NAME)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.token = kvstore_token(args)
    configure_logging()
    prometheus_client.disable_created_metrics()   # as the scheduler's (scheduler/daemon.py)
    config = StoreConfig(ram_bytes=args.ram, shm_dir=args.shm_dir, disk_dir=args.disk,
                         disk_bytes=args.disk_size, fsync=FsyncMode(args.fsync),
                         is_write_through=args.write_through, lease_ttl_s=args.lease_ttl,
                         policy=args.policy)
    store = Store(config, open_backing(args))
    log.info("index rebuilt: %d pages in %.3f s", store.num_rebuilt, store.rebuild_s)
    server, health = build_server(store, args)
    bound = bind_listeners(server, args)
    server.start()
    health.mark_ready()
    log.info("listening on %s (ram %d bytes, disk %s, backing %s)", " ".join(bound), args.ram,
             args.disk or "off", args.backing or "off")
    stop = stop_on_signals()
    stop.wait()
    drain(server, health, GRACE_SECONDS, store.close)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
