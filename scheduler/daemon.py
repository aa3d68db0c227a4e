"""`strata scheduler`: the public Generation server in front of one executor.

Start-up: serve health (liveness "" SERVING, readiness "strata.v1.Generation" NOT_SERVING) and
reflection at once, connect to the executor (retrying with a log line), Describe + Reset, load
the tokenizer, start the engine thread, then mark readiness SERVING.
Shutdown (SIGTERM / SIGINT): runtime.server.drain: NOT_SERVING -> server.stop(grace) -> engine shutdown.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import threading
from pathlib import Path

import prometheus_client
from tokenizers import Tokenizer

from protos.v1 import generation_pb2, generation_pb2_grpc
from runtime.api_keys import KEY_ENV, load_api_keys
from runtime.listen import add_public_listeners, add_tls_flags, check_tls_flags
from runtime.logs import configure_logging
from runtime.server import Health, drain, make_server, stop_on_signals
from runtime.token import read_token_file
from scheduler.engine import Engine
from scheduler.executor_link import ExecutorLink
from runtime.decoding import DecodeErrorInterceptor
from scheduler.host_tiers import NullHostTiers
from scheduler.kv_link import KVStoreLink
from scheduler.offload import KVStoreTiers, OffloadConfig
from scheduler.scheduler import Scheduler, SchedulerConfig
from scheduler.service import GenerationService

log = logging.getLogger("strata.scheduler")

SERVICE = generation_pb2.DESCRIPTOR.services_by_name["Generation"]
SERVICE_NAME = SERVICE.full_name
GRACE_SECONDS = 5.0
DEFAULT_LISTEN = "127.0.0.1:50051"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="strata scheduler", description=__doc__.splitlines()[0])
    parser.add_argument("--executor", required=True, help="executor address, e.g. unix:/tmp/x/executor.sock")
    parser.add_argument("--listen", action="append", default=None,
                        help=f"public address, HOST:PORT or unix:PATH, repeatable (default {DEFAULT_LISTEN}; "
                             "port 0: any free port)")
    add_tls_flags(parser)
    parser.add_argument("--api-key-file", default=None,
                        help="keys the public API requires, one a line, optionally `KEY CACHE_SALT` "
                             "(runtime/api_keys.py); $STRATA_API_KEY adds one; none: the API is open")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None,
                        help="token budget per step (default and ceiling: the executor's)")
    parser.add_argument("--max-num-seqs", type=int, default=None,
                        help="requests per step (default and ceiling: the executor's)")
    parser.add_argument("--kvstore", default=None,
                        help="kvstore address (unix:PATH or HOST:PORT) for offloading and prefix "
                             "reuse from RAM/NVMe; absent: device prefix cache only")
    parser.add_argument("--no-prefix-caching", action="store_true",
                        help="no KV reuse at all: every prompt token is computed (a baseline; "
                             "cannot be combined with --kvstore)")
    parser.add_argument("--internal-token-file", default=None,
                        help="file holding the internal token the scheduler presents to the executor "
                             "and the kvstore (their --token-file); the public API is not covered")
    parser.add_argument("--kvstore-token", default=None,
                        help="bearer token of the kvstore when it is not the internal one "
                             "(env STRATA_KVSTORE_TOKEN)")
    parser.add_argument("--max-store-pages-per-step", type=int, default=256,
                        help="store bandwidth budget: pages written through to the kvstore per step")
    parser.add_argument("--load-policy", choices=["cost", "always"], default="cost",
                        help="cost: load kvstore pages when the measured load time beats the "
                             "measured prefill time, else recompute; always: load every hit")
    parser.add_argument("--max-waiting", type=int, default=1024,
                        help="waiting requests before new ones get RESOURCE_EXHAUSTED")
    args = parser.parse_args(argv)
    args.listen = args.listen or [DEFAULT_LISTEN]
    if args.no_prefix_caching and args.kvstore:
        parser.error("--no-prefix-caching turns off every KV reuse; drop it or drop --kvstore")
    return args


def read_tokens(args: argparse.Namespace) -> None:
    """args.internal_token: the internal token file's (the executor's token); args.kvstore_token:
    --kvstore-token, else the internal token, else STRATA_KVSTORE_TOKEN; args.api_keys: the
    public API's keys (--api-key-file's and $STRATA_API_KEY's)."""
    args.internal_token = read_token_file(args.internal_token_file) if args.internal_token_file else None
    args.kvstore_token = args.kvstore_token or args.internal_token or os.environ.get("STRATA_KVSTORE_TOKEN")
    args.api_keys = load_api_keys(args.api_key_file, os.environ.get(KEY_ENV))


def capped(value: int | None, ceiling: int, name: str) -> int:
    if value is None:
        return ceiling
    if not 0 < value <= ceiling:
        raise SystemExit(f"--{name} must be in 1..{ceiling} (the executor's limit), got {value}")
    return value


def build_engine(link: ExecutorLink, args: argparse.Namespace, on_lost) -> tuple:
    describe = link.describe()
    link.reset()
    tokenizer = Tokenizer.from_file(str(Path(describe.model_path) / "tokenizer.json"))
    config = SchedulerConfig(
        block_size=describe.block_size, num_blocks=describe.num_blocks,
        max_num_batched_tokens=capped(args.max_num_batched_tokens, describe.max_num_batched_tokens,
                                      "max-num-batched-tokens"),
        max_num_seqs=capped(args.max_num_seqs, describe.max_num_seqs, "max-num-seqs"),
        max_model_len=describe.max_model_len, eos_token_ids=frozenset(describe.eos_token_ids),
        enable_prefix_caching=not args.no_prefix_caching)
    make_tiers = build_tiers(link, args, describe) if args.kvstore else NullHostTiers
    engine = Engine(Scheduler(config, make_tiers), link.step, tokenizer, args.max_waiting, on_lost)
    return engine, tokenizer, describe


def build_tiers(link: ExecutorLink, args: argparse.Namespace,
                describe) -> functools.partial[KVStoreTiers]:
    """KVStoreTiers over the scheduler's block pool, its kvstore link started. The kvstore
    namespace names the page layout: pages of another model, dtype or shape never mix (the block
    keys bind the same and the cache_salt)."""
    shape = (describe.num_layers, 2, describe.block_size, describe.num_kv_heads, describe.head_dim)
    namespace = f"{describe.model_id}/{describe.kv_dtype}/{'x'.join(map(str, shape))}"
    kv_link = KVStoreLink(args.kvstore, namespace, describe.page_bytes, args.kvstore_token)
    kv_link.start()
    return functools.partial(
        KVStoreTiers, link=kv_link, block_size=describe.block_size, page_bytes=describe.page_bytes,
        map_arena=link.map_arena,
        config=OffloadConfig(max_store_pages_per_step=args.max_store_pages_per_step,
                             is_always_load=args.load_policy == "always"))


class SchedulerDaemon:
    def __init__(self, args: argparse.Namespace, stop_event: threading.Event):
        self.args = args
        self.stop_event = stop_event
        self.service = GenerationService(args.api_keys)
        self.link = ExecutorLink(args.executor, args.internal_token)
        self.engine: Engine | None = None
        workers = args.max_waiting + 256   # each open Generate stream holds a worker thread
        self.server = make_server(workers, [*args.api_keys.interceptors(), DecodeErrorInterceptor(SERVICE)])
        generation_pb2_grpc.add_GenerationServicer_to_server(self.service, self.server)
        self.health = Health(self.server, SERVICE_NAME)

    def start(self) -> bool:
        bound = add_public_listeners(self.server, self.args, self.args.listen)
        self.server.start()
        log.info("scheduler listening on %s (%s, %s)", " ".join(bound),
                 "TLS on TCP" if self.args.tls_cert else "plain",
                 "API keys required" if self.args.api_keys.is_required() else "no API key")
        if not self.link.wait_until_ready(self.stop_event.is_set):
            return False
        self.engine, tokenizer, describe = build_engine(self.link, self.args, self.reconnect)
        self.service.attach(self.engine, tokenizer, describe)
        self.engine.start()
        self.health.mark_ready()
        log.info("connected to executor %s (model %s, %d blocks of %d tokens)", self.args.executor,
                 describe.architecture, describe.num_blocks, describe.block_size)
        return True

    def reconnect(self) -> None:
        """Engine thread: the executor failed a step; wait for it, Reset, serve again."""
        self.health.mark_not_ready()
        if self.link.wait_until_ready(self.stop_event.is_set):
            self.link.reset()
            self.engine.scheduler.tiers.remap_arena()   # a new executor maps nothing
            self.health.mark_ready()

    def stop(self) -> None:
        """After drain(): no RPC uses the engine any more."""
        if self.engine is not None:
            self.engine.shutdown()
            self.engine.scheduler.tiers.close()
        self.link.close()


def main(argv: list[str]) -> int:
    configure_logging()
    # A *_created series per counter doubles GetMetrics' text, and text format 0.0.4 has no
    # place for it (Prometheus ingests it as one more gauge). Process-wide: the daemon's call.
    prometheus_client.disable_created_metrics()
    args = parse_args(argv)
    check_tls_flags(args, args.listen)   # before the tokenizer loads: a refusal comes at once
    read_tokens(args)
    daemon = SchedulerDaemon(args, stop_on_signals())
    daemon.start()
    daemon.stop_event.wait()
    log.info("shutting down")
    drain(daemon.server, daemon.health, GRACE_SECONDS, daemon.stop)
    return 0
