"""`strata kvstore`: run the kvstore daemon.

    strata kvstore --ram 4GiB --disk DIR --disk-size 50GiB [--backing ADDR] [--listen ADDR]
"""
import argparse
import logging
import os
import re
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvstore.client import CHANNEL_OPTIONS, KVStoreClient
from kvstore.disk import FsyncMode
from kvstore.service import SERVICE_NAME, KVStoreService, TokenInterceptor
from kvstore.store import Store, StoreConfig
from protos.listen import SERVER_OPTIONS, bind
from protos.v1 import kvstore_pb2, kvstore_pb2_grpc

log = logging.getLogger("strata.kvstore")
UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
         "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
DEFAULT_LISTEN = "127.0.0.1:50053"


def parse_size(text: str) -> int:
    """'4GiB', '512MiB', '65536' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use e.g. 4GiB, 512MiB, 65536")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="strata kvstore", description=__doc__.splitlines()[0])
    parser.add_argument("--ram", type=parse_size, default=parse_size("1GiB"),
                        help="RAM tier capacity (shared-memory arena), e.g. 4GiB")
    parser.add_argument("--shm-dir", default="/dev/shm", help="where arena files are created")
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
    parser.add_argument("--token", default=os.environ.get("STRATA_KVSTORE_TOKEN"),
                        help="bearer token clients must send (env STRATA_KVSTORE_TOKEN)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback TCP listener without TLS")
    return parser


def is_local(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    return address.startswith("unix:") or host in ("127.0.0.1", "localhost", "::1")


def add_listeners(server: grpc.Server, args: argparse.Namespace) -> list[str]:
    credentials = None
    if args.tls_cert and args.tls_key:
        with open(args.tls_key, "rb") as key, open(args.tls_cert, "rb") as cert:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
    bound = []
    for address in args.listen or [DEFAULT_LISTEN]:
        if address.startswith("unix:") or credentials is None:
            if not is_local(address) and not args.insecure:
                raise SystemExit(f"refusing plain TCP on {address}: give --tls-cert/--tls-key "
                                 "(or --insecure on a trusted network)")
            port = bind(server, address)
        else:
            port = bind(server, address, credentials)
        bound.append(address if address.startswith("unix:") else
                     f"{address.rpartition(':')[0]}:{port}")
    return bound


def open_backing(args: argparse.Namespace) -> KVStoreClient | None:
    if args.backing is None:
        return None
    ca_pem = open(args.backing_ca, "rb").read() if args.backing_ca else None
    return KVStoreClient(args.backing, token=args.backing_token, ca_pem=ca_pem)


def build_server(store: Store, args: argparse.Namespace) -> tuple[grpc.Server, health.HealthServicer]:
    interceptors = [TokenInterceptor(args.token)] if args.token else []
    server = grpc.server(ThreadPoolExecutor(max_workers=16), interceptors=interceptors,
                         options=CHANNEL_OPTIONS + SERVER_OPTIONS)
    kvstore_pb2_grpc.add_KVStoreServicer_to_server(KVStoreService(store), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (kvstore_pb2.DESCRIPTOR.services_by_name["KVStore"].full_name,
             reflection.SERVICE_NAME, health.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    return server, health_servicer


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="kvstore: %(message)s")
    config = StoreConfig(ram_bytes=args.ram, shm_dir=args.shm_dir, disk_dir=args.disk,
                         disk_bytes=args.disk_size, fsync=FsyncMode(args.fsync),
                         is_write_through=args.write_through, lease_ttl_s=args.lease_ttl,
                         policy=args.policy)
    store = Store(config, open_backing(args))
    log.info("index rebuilt: %d pages in %.3f s", store.num_rebuilt, store.rebuild_s)
    server, health_servicer = build_server(store, args)
    bound = add_listeners(server, args)
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("listening on %s (ram %d bytes, disk %s, backing %s)", " ".join(bound), args.ram,
             args.disk or "off", args.backing or "off")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    health_servicer.enter_graceful_shutdown()  # NOT_SERVING first, then drain, then the store
    server.stop(grace=5).wait()
    store.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
