"""`strata kvstore`: run the kvstore daemon.

    strata kvstore --ram 4GiB --disk DIR --disk-size 50GiB [--backing ADDR|URL] [--listen ADDR]
"""
import argparse
import logging
import os
import sys

import grpc
import prometheus_client

from kvstore.backing import Backing, KVStoreBacking
from kvstore.disk import FsyncMode
from kvstore.redis_backing import RedisBacking, RedisConfig
from kvstore.redis_target import BackingConfigError, is_redis_url, parse_target
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
BACKING_ENV = "STRATA_KVSTORE_BACKING"
DEFAULT_NAMESPACE = "default"   # the Redis backing's key prefix: strata:default:


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
    add_backing_flags(parser)
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


def add_backing_flags(parser: argparse.ArgumentParser) -> None:
    backing = parser.add_argument_group("backing (the tier below: another kvstore, or Redis/Valkey)")
    backing.add_argument("--backing", default=os.environ.get(BACKING_ENV) or None,
                         help="HOST:PORT of the kvstore below this one, or redis://[user:password@]"
                              "host:port[/db], rediss://... (TLS), redis://h1:p1,h2:p2,... (a Redis "
                              f"Cluster); default ${BACKING_ENV} (empty: none)")
    backing.add_argument("--backing-ca", default=None, help="CA cert (PEM) to reach it over TLS")
    backing.add_argument("--backing-token", default=os.environ.get("STRATA_KVSTORE_BACKING_TOKEN"),
                         help="a kvstore backing's bearer token (env STRATA_KVSTORE_BACKING_TOKEN); "
                              "a Redis password goes in the URL or $STRATA_KVSTORE_BACKING_PASSWORD")
    backing.add_argument("--backing-namespace", default=DEFAULT_NAMESPACE,
                         help="Redis: keys are strata:NAMESPACE:<page key>; instances that share "
                              "pages use the same one")
    backing.add_argument("--backing-ttl", type=positive_seconds, default=None,
                         help="Redis: seconds a page lives (default: until maxmemory evicts it)")
    backing.add_argument("--backing-timeout", type=positive_seconds, default=0.5,
                         help="Redis: connect and socket timeout in seconds; past it a call is a "
                              "miss and the backing is skipped for a second")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0 (e.g. 0.5, 3600)")
    return value


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


def open_backing(args: argparse.Namespace) -> Backing | None:
    """The backing --backing names: Redis/Valkey for a redis:// or rediss:// URL (its login
    checked now; one that is down is a warning), else another kvstore. Raises
    BackingConfigError for a flag to change."""
    if args.backing is None:
        return None
    if is_redis_url(args.backing):
        return open_redis_backing(args)
    if args.backing_ttl is not None or args.backing_namespace != DEFAULT_NAMESPACE:
        raise BackingConfigError("--backing-ttl and --backing-namespace are for a Redis backing "
                                 f"(redis://...), not the kvstore at {args.backing}: drop them")
    ca_pem = open(args.backing_ca, "rb").read() if args.backing_ca else None
    return KVStoreBacking(KVStoreClient(args.backing, token=args.backing_token, ca_pem=ca_pem))


def open_redis_backing(args: argparse.Namespace) -> RedisBacking:
    if not args.backing_namespace or any(c.isspace() or c == ":" for c in args.backing_namespace):
        raise BackingConfigError(f"--backing-namespace {args.backing_namespace!r}: give a "
                                 "non-empty name without spaces or ':' (e.g. prod-llama)")
    config = RedisConfig(parse_target(args.backing, args.backing_ca), args.backing_namespace,
                         args.backing_ttl, args.backing_timeout)
    backing = RedisBacking(config)
    try:
        backing.check_access()
    except BackingConfigError:
        backing.close()
        raise
    return backing


def describe_backing(backing: str | None) -> str:
    """--backing for the log, without a Redis URL's credentials."""
    if backing is None:
        return "off"
    return parse_target(backing).describe() if is_redis_url(backing) else backing


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
    stop = stop_on_signals()   # before the store exists: a SIGTERM from here on drains and closes it
    prometheus_client.disable_created_metrics()   # as the scheduler's (scheduler/daemon.py)
    config = StoreConfig(ram_bytes=args.ram, shm_dir=args.shm_dir, disk_dir=args.disk,
                         disk_bytes=args.disk_size, fsync=FsyncMode(args.fsync),
                         is_write_through=args.write_through, lease_ttl_s=args.lease_ttl,
                         policy=args.policy)
    try:
        backing = open_backing(args)
    except BackingConfigError as error:
        raise SystemExit(f"strata kvstore: {error}") from None
    store = Store(config, backing)
    log.info("index rebuilt: %d pages in %.3f s", store.num_rebuilt, store.rebuild_s)
    server, health = build_server(store, args)
    bound = bind_listeners(server, args)
    server.start()
    health.mark_ready()
    log.info("listening on %s (ram %d bytes, disk %s, backing %s)", " ".join(bound), args.ram,
             args.disk or "off", describe_backing(args.backing))
    stop.wait()
    drain(server, health, GRACE_SECONDS, store.close)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
