"""`strata executor`: serve strata.v1.Executor (plus health and reflection) for one model.

Imports torch only after the thread policy is set: OpenMP reads it once, at load.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from runtime.arenas import DEFAULT_ARENA_DIR
from runtime.listen import MESSAGE_OPTIONS, add_listeners, is_unix
from runtime.logs import configure_logging
from runtime.server import Health, drain, make_server, stop_on_signals
from runtime.sizes import parse_size
from runtime.token import add_token_flags, required_token, token_interceptors

log = logging.getLogger("strata.executor")

SERVICE_NAME = "strata.v1.Executor"
NUM_WORKERS = 4
GRACE_SECONDS = 2.0


# Names the executor accepts for --dtype and --kv-cache-dtype (executor/models/loader.py DTYPES).
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--dtype, --kv-cache-dtype and --block-size: the executor's, and `strata up`'s for it."""
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="compute dtype (auto: the checkpoint's on CUDA; on a CPU bf16 where it "
                             "has AMX-BF16 or AVX512-BF16, else fp32)")
    parser.add_argument("--kv-cache-dtype", default="auto", choices=DTYPE_CHOICES,
                        help="KV storage dtype on the device and in the kvstore (auto: the compute "
                             "dtype); 16-bit halves the KV bytes and rounds K/V")
    parser.add_argument("--block-size", type=int, default=16, help="tokens per KV block")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="strata executor", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="save_pretrained directory (default: built-in random model)")
    parser.add_argument("--data-dir", type=Path, help="default: $STRATA_DATA_DIR or ~/.cache/strata")
    parser.add_argument("--listen", help="unix:PATH or HOST:PORT (default: unix:<data-dir>/run/executor.sock)")
    add_model_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    pool = parser.add_mutually_exclusive_group()
    pool.add_argument("--num-device-blocks", type=int)
    pool.add_argument("--kv-cache-memory", "--kv-cache-bytes", dest="kv_cache_bytes", metavar="SIZE",
                      type=parse_size, help="bytes of KV pool, e.g. 64MiB or 2GiB (default: from free memory)")
    parser.add_argument("--max-num-batched-tokens", type=int,
                        help="token budget per step (default: 512 on a CPU, 4096 on CUDA)")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--num-threads", type=int, help="torch threads (default: every usable core)")
    parser.add_argument("--arena-dir", default=DEFAULT_ARENA_DIR,
                        help="the kvstore's --shm-dir: MapArena maps only the kvstore's arena files "
                             f"directly inside it (default {DEFAULT_ARENA_DIR})")
    add_token_flags(parser, "serve without a token: every process that reaches the listener may "
                            "drive the executor")
    return parser


def set_thread_policy(num_threads: int | None) -> int:
    """Before torch loads: passive OpenMP waits (busy-waiting cores shared with the other
    daemons made torch 5-70x slower here) and, by default, one thread per usable core. The
    scheduler and the gRPC threads are idle while the forward runs (plan + apply are ~2% of a
    step), so a core kept free for them is a core that does not compute (2 cores, 125M Llama,
    random workload: 1 thread 164 output tok/s, 2 threads 220)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Transparent huge pages for torch's CPU allocations (the KV pool, weights): fewer TLB
    # misses in the memory-bound decode attention (a few percent measured here).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if num_threads is None:
        num_threads = num_usable_cores()
    os.environ.setdefault("OMP_NUM_THREADS", str(num_threads))
    return num_threads


def num_usable_cores() -> int:
    """Cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    token = required_token(args, "executor")
    configure_logging()
    num_threads = set_thread_policy(args.num_threads)
    from executor.default_model import default_data_dir

    data_dir = args.data_dir or default_data_dir()
    listen = args.listen or f"unix:{data_dir / 'run' / 'executor.sock'}"
    server, health, service = start_server(listen, token)
    stop = stop_on_signals()
    try:
        service.runner = load_runner(args, data_dir, num_threads)
    except Exception as error:  # noqa: BLE001 - report the reason, not a traceback, and exit
        log.error("cannot start: %s", error)
        server.stop(0)
        return 1
    health.mark_ready()
    log.info("ready on %s", listen)
    stop.wait()
    log.info("shutting down")
    drain(server, health, GRACE_SECONDS)
    return 0


def load_runner(args, data_dir: Path, num_threads: int):
    import torch

    from executor.default_model import ensure_default_model
    from executor.settings import RunnerSettings, build_runner

    torch.set_num_threads(num_threads)
    log.info("threads: torch %d, OMP_NUM_THREADS=%s, OMP_WAIT_POLICY=%s", torch.get_num_threads(),
             os.environ.get("OMP_NUM_THREADS"), os.environ.get("OMP_WAIT_POLICY"))
    model_dir = args.model or ensure_default_model(data_dir)
    settings = RunnerSettings(
        model_dir=model_dir, dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype, device=args.device,
        block_size=args.block_size,
        num_device_blocks=args.num_device_blocks, kv_cache_bytes=args.kv_cache_bytes,
        max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
        arena_dir=args.arena_dir)
    return build_runner(settings)


def start_server(listen: str, token: str | None):
    """Serve health (readiness NOT_SERVING) and every RPC (UNAVAILABLE) while the model loads;
    every RPC but health and reflection requires `token` (none: --insecure)."""
    from executor.service import ExecutorService
    from protos.v1 import executor_pb2, executor_pb2_grpc
    from runtime.decoding import DecodeErrorInterceptor

    undecodable = DecodeErrorInterceptor(executor_pb2.DESCRIPTOR.services_by_name["Executor"])
    server = make_server(NUM_WORKERS, [*token_interceptors(token, "executor", "--token-file"), undecodable],
                         MESSAGE_OPTIONS)
    service = ExecutorService()
    executor_pb2_grpc.add_ExecutorServicer_to_server(service, server)
    health = Health(server, SERVICE_NAME)
    if is_unix(listen):
        Path(listen.removeprefix("unix:")).parent.mkdir(parents=True, exist_ok=True)
        Path(listen.removeprefix("unix:")).unlink(missing_ok=True)  # a stale socket of a dead run
    bound = add_listeners(server, [listen])[0]
    server.start()
    log.info("listening on %s%s (loading the model)", listen,
             f" (port {bound.rpartition(':')[2]})" if listen.endswith(":0") else "")
    if token is None:
        log.warning("no token (--insecure): every process that reaches %s may call the executor", listen)
    return server, health, service
