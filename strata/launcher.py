"""`strata up` and `strata demo`: all daemons on this machine as supervised child processes.

    strata up [--model DIR]   kvstore + executor + scheduler on unix sockets in a private 0700
                              temp dir, the public API on --host:--port; children restarted
                              when they die. A per-run internal token (a 0600 file in that dir)
                              guards the executor's and the kvstore's sockets; the OpenAI
                              HTTP gateway on --http-host:--http-port (0: none)
    strata demo               the same on the built-in model, one streamed completion, then stop
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Callable

import grpc

from executor.daemon import add_model_arguments   # torch-free: the executor imports torch late
from executor.default_model import default_data_dir
from kvstore.ram import remove_arenas_of
from protos.v1 import generation_pb2, generation_pb2_grpc
from runtime.api_keys import KEY_ENV, read_key_file
from runtime.arenas import DEFAULT_ARENA_DIR
from runtime.listen import add_tls_flags, check_tls_flags
from runtime.logs import configure_logging
from runtime.sizes import parse_size
from runtime.token import new_token, with_token, write_token_file
from strata.client import stream_completion
from strata.gateway.server import SCHEDULER_KEY_ENV
from strata.public_channel import read_pem, secure_or_plain
from strata.supervisor import ChildSpec, Supervisor

log = logging.getLogger("strata.up")

DEMO_PROMPT = "def fibonacci(n):"
SHM_DIR = DEFAULT_ARENA_DIR   # the kvstore's RAM arenas
TOKEN_FILE = "internal.token"   # in the run dir: the executor's and kvstore's token, the scheduler presents it
# In the run dir too: the scheduler's own socket for the local clients (the readiness probe, the
# gateway), so they need neither TLS nor a certificate that names the loopback address.
SCHEDULER_SOCKET = "scheduler.sock"


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="save_pretrained directory (default: built-in model)")
    add_public_api_flags(parser)
    parser.add_argument("--http-host", default="127.0.0.1",
                        help="OpenAI-compatible HTTP API bind address (`strata gateway`)")
    parser.add_argument("--http-port", type=int, default=8000,
                        help="OpenAI-compatible HTTP API port; 0 turns the gateway off "
                             "(an API key comes from $STRATA_API_KEY)")
    parser.add_argument("--model-name", default=None,
                        help="the model name HTTP clients send (default: the model id)")
    pool = parser.add_mutually_exclusive_group()
    pool.add_argument("--num-device-blocks", type=int, help="KV blocks (default: from free memory)")
    pool.add_argument("--kv-cache-memory", metavar="SIZE", type=parse_size,
                      help="bytes of device KV pool, e.g. 64MiB or 2GiB (as vLLM's kv_cache_memory_bytes; "
                           "default: from free memory)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="models, logs (default: $STRATA_DATA_DIR or ~/.cache/strata)")
    add_model_arguments(parser)
    parser.add_argument("--max-num-batched-tokens", type=int)
    parser.add_argument("--max-num-seqs", type=int)
    parser.add_argument("--max-waiting", type=int, default=1024)
    parser.add_argument("--num-threads", type=int, help="executor torch threads (default: every usable core)")
    tiers = parser.add_argument_group("kvstore (offloading and prefix reuse from RAM and disk)")
    tiers.add_argument("--no-kvstore", action="store_true",
                       help="no kvstore: device prefix cache only, preemption by recompute")
    tiers.add_argument("--no-prefix-caching", action="store_true",
                       help="no KV reuse at all, not even the device prefix cache (a baseline; "
                            "implies --no-kvstore)")
    tiers.add_argument("--kvstore-ram", default=None,
                       help="RAM tier size, e.g. 4GiB (default: 1/8 of available RAM, at most 4GiB)")
    tiers.add_argument("--kvstore-disk", default=None,
                       help="disk tier size under <data-dir>/kvstore, e.g. 20GiB; 0 turns it off "
                            "(default: 1/4 of the free space there, at most 16GiB)")
    tiers.add_argument("--kvstore-backing", metavar="URL", default=None,
                       help="a cache shared with other instances: redis://[user:password@]host:port, "
                            "rediss://..., redis://h1:p1,h2:p2 (a cluster), or another kvstore's "
                            "HOST:PORT (`strata kvstore --backing`; a Redis password may come from "
                            "$STRATA_KVSTORE_BACKING_PASSWORD)")
    return parser


def add_public_api_flags(parser: argparse.ArgumentParser) -> None:
    """The scheduler's public port: where, TLS or --insecure, and its API keys."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="public API bind address (off loopback: --tls-cert/--tls-key, or --insecure)")
    parser.add_argument("--port", type=int, default=50051)
    add_tls_flags(parser)
    parser.add_argument("--api-key-file", default=None,
                        help="keys the public API requires, one a line, optionally `KEY CACHE_SALT` "
                             "($STRATA_API_KEY adds one; the gateway presents it, else the file's first key)")


def default_ram_tier_bytes() -> int:
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        available = 8 << 30
    return max(64 << 20, min(4 << 30, available // 8))


def default_disk_tier_bytes(data_dir: Path) -> int:
    return min(16 << 30, shutil.disk_usage(data_dir).free // 4)


def child_specs(args: argparse.Namespace, run_dir: Path) -> list[ChildSpec]:
    """Readiness order: the kvstore, the executor (it maps the kvstore's arena), the scheduler."""
    executor_socket, token_file = f"unix:{run_dir / 'executor.sock'}", str(run_dir / TOKEN_FILE)
    scheduler_socket = f"unix:{run_dir / SCHEDULER_SOCKET}"
    executor = ["executor", "--listen", executor_socket, "--data-dir", str(args.data_dir),
                "--block-size", str(args.block_size), "--dtype", args.dtype,
                "--kv-cache-dtype", args.kv_cache_dtype, "--token-file", token_file,
                "--arena-dir", SHM_DIR]
    scheduler = ["scheduler", "--executor", executor_socket, "--listen", f"{args.host}:{args.port}",
                 "--listen", scheduler_socket, "--max-waiting", str(args.max_waiting),
                 "--internal-token-file", token_file, *public_flags(args)]
    # The scheduler takes its step limits from the executor's Describe: caps go there only.
    optional = {"--model": args.model, "--num-device-blocks": args.num_device_blocks,
                "--kv-cache-memory": args.kv_cache_memory,
                "--max-num-batched-tokens": args.max_num_batched_tokens,
                "--max-num-seqs": args.max_num_seqs, "--num-threads": args.num_threads}
    for flag, value in optional.items():
        if value is not None:
            executor.extend([flag, str(value)])
    children = [
        ChildSpec("executor", executor, executor_socket, "strata.v1.Executor"),
        ChildSpec("scheduler", scheduler, scheduler_socket, "strata.v1.Generation", 120.0),
    ]
    if args.http_port:
        children.append(gateway_spec(args, scheduler_socket))
    if args.no_prefix_caching:
        scheduler.append("--no-prefix-caching")
    if not args.no_kvstore and not args.no_prefix_caching:
        kvstore_socket = f"unix:{run_dir / 'kvstore.sock'}"
        scheduler.extend(["--kvstore", kvstore_socket])
        children.insert(0, ChildSpec("kvstore", kvstore_argv(args, kvstore_socket, token_file),
                                     kvstore_socket, "strata.v1.KVStore", 60.0, remove_dead_kvstore_arenas))
    return children


def public_flags(args: argparse.Namespace) -> list[str]:
    """The scheduler's TLS, --insecure and API key flags, as given to `strata up`."""
    flags = ["--tls-cert", args.tls_cert, "--tls-key", args.tls_key] if args.tls_cert else []
    flags += ["--insecure"] if args.insecure else []
    return flags + (["--api-key-file", args.api_key_file] if args.api_key_file else [])


def gateway_spec(args: argparse.Namespace, scheduler_socket: str) -> ChildSpec:
    """The HTTP gateway, last: a client of the scheduler's own unix socket. Its keys come from
    the environment, not from argv where `ps` shows them: $STRATA_API_KEY (inherited) guards its
    HTTP API and is presented to the scheduler; without it, the key file's first key is."""
    argv = ["gateway", "--scheduler", scheduler_socket, "--host", args.http_host, "--port", str(args.http_port)]
    if args.model_name:
        argv += ["--model-name", args.model_name]
    env = {}
    if args.api_key_file and not os.environ.get(KEY_ENV):
        env[SCHEDULER_KEY_ENV] = read_key_file(args.api_key_file)[0].key
    url = f"http://{client_host(args.http_host)}:{args.http_port}/health"
    return ChildSpec("gateway", argv, url, "", 60.0, ready_probe=functools.partial(is_http_ready, url), env=env)


def client_host(bind_host: str) -> str:
    """Where a local client reaches a server bound to bind_host (a wildcard bind: loopback)."""
    return "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host


def is_http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as reply:
            return reply.status == 200
    except (OSError, ValueError):
        return False


def remove_dead_kvstore_arenas(pid: int) -> None:
    """The kvstore `pid` died (kill -9 leaves its RAM arena in tmpfs): free it now."""
    if remove_arenas_of(pid, SHM_DIR):
        log.info("removed the arena files of the dead kvstore (pid %d) from %s", pid, SHM_DIR)


def kvstore_argv(args: argparse.Namespace, listen: str, token_file: str) -> list[str]:
    ram = args.kvstore_ram or str(default_ram_tier_bytes())
    argv = ["kvstore", "--listen", listen, "--ram", ram, "--shm-dir", SHM_DIR, "--token-file", token_file]
    disk = args.kvstore_disk or str(default_disk_tier_bytes(args.data_dir))
    if disk.strip() != "0":
        disk_dir = args.data_dir / "kvstore"
        disk_dir.mkdir(parents=True, exist_ok=True)
        argv += ["--disk", str(disk_dir), "--disk-size", disk]
    if args.kvstore_backing:
        argv += ["--backing", args.kvstore_backing]
    return argv


def serve(args: argparse.Namespace, on_ready: Callable[[str, threading.Event, Supervisor], int]) -> int:
    """Start the children, call on_ready(address, stop, supervisor), then stop everything."""
    configure_logging()
    args.data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    log_dir = args.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="strata-"))   # mode 0700; short for socket paths
    write_token_file(run_dir / TOKEN_FILE, new_token())   # this run's internal token, 0600
    supervisor = Supervisor(log_dir)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        supervisor.start(child_specs(args, run_dir), stop.is_set)
        address = f"{args.host}:{args.port}"
        print(f"strata serving on {address}", flush=True)
        if args.http_port:
            print(f"OpenAI-compatible API on http://{args.http_host}:{args.http_port}/v1", flush=True)
        return on_ready(address, stop, supervisor)
    except RuntimeError as error:
        log.error("%s", error)
        return 1
    finally:
        supervisor.stop_all()
        shutil.rmtree(run_dir, ignore_errors=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def keep_serving(address: str, stop: threading.Event, supervisor: Supervisor) -> int:
    while not stop.wait(0.5):
        supervisor.restart_dead_children()
    log.info("stopping")
    return 0


def parse_up_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The scheduler's own TLS rule, checked before any child starts (a refusal comes at once)."""
    args = parser.parse_args(argv)
    check_tls_flags(args, [f"{args.host}:{args.port}"])
    return args


def main(argv: list[str]) -> int:
    return serve(parse_up_args(build_parser("strata up"), argv), keep_serving)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_channel(args: argparse.Namespace, address: str) -> grpc.Channel:
    """The demo's channel to the public port: TLS trusting --tls-cert (a self-signed one names
    this host), the key $STRATA_API_KEY's or the key file's first."""
    key = os.environ.get(KEY_ENV) or (read_key_file(args.api_key_file)[0].key if args.api_key_file else None)
    return with_token(secure_or_plain(address, read_pem(args.tls_cert)), key)


def demo_main(argv: list[str]) -> int:
    parser = build_parser("strata demo")
    parser.add_argument("--prompt", default=DEMO_PROMPT)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.set_defaults(port=0, http_port=0)
    args = parse_up_args(parser, argv)
    args.port = args.port or free_port()

    def run_once(address: str, stop: threading.Event, supervisor: Supervisor) -> int:
        request = generation_pb2.GenerateRequest(text=args.prompt)
        request.sampling.temperature = 0.8
        request.sampling.seed = 0
        request.stopping.max_tokens = args.max_tokens
        request.stopping.ignore_eos = True
        with demo_channel(args, address) as channel:
            print(args.prompt, end="", flush=True)
            summary = stream_completion(generation_pb2_grpc.GenerationStub(channel), request, sys.stdout)
        print("\n" + summary.line(), flush=True)
        return 0

    return serve(args, run_once)
