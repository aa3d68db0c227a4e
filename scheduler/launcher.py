"""`strata up` and `strata demo`: all daemons on this machine as supervised child processes.

    strata up [--model DIR]   executor + scheduler on unix sockets in a private 0700 temp dir,
                              the public API on --host:--port; children restarted when they die
    strata demo               the same on the built-in model, one streamed completion, then stop
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

import grpc

from protos.v1 import generation_pb2, generation_pb2_grpc
from scheduler.client import stream_completion
from scheduler.supervisor import ChildSpec, Supervisor

log = logging.getLogger("strata.up")

DEMO_PROMPT = "def fibonacci(n):"


def default_data_dir() -> Path:
    return Path(os.environ.get("STRATA_DATA_DIR") or Path.home() / ".cache" / "strata")


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="save_pretrained directory (default: built-in model)")
    parser.add_argument("--host", default="127.0.0.1", help="public API bind address")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--num-device-blocks", type=int, help="KV blocks (default: from free memory)")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="models, logs (default: $STRATA_DATA_DIR or ~/.cache/strata)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-num-batched-tokens", type=int)
    parser.add_argument("--max-num-seqs", type=int)
    parser.add_argument("--max-waiting", type=int, default=1024)
    return parser


def child_specs(args: argparse.Namespace, run_dir: Path) -> list[ChildSpec]:
    """Start order. A kvstore child (a later issue) goes first: the executor maps its arena."""
    executor_socket = f"unix:{run_dir / 'executor.sock'}"
    executor = ["executor", "--listen", executor_socket, "--data-dir", str(args.data_dir),
                "--block-size", str(args.block_size), "--dtype", args.dtype]
    scheduler = ["scheduler", "--executor", executor_socket, "--listen", f"{args.host}:{args.port}",
                 "--max-waiting", str(args.max_waiting)]
    # The scheduler takes its step limits from the executor's Describe: caps go there only.
    optional = {"--model": args.model, "--num-device-blocks": args.num_device_blocks,
                "--max-num-batched-tokens": args.max_num_batched_tokens,
                "--max-num-seqs": args.max_num_seqs}
    for flag, value in optional.items():
        if value is not None:
            executor.extend([flag, str(value)])
    return [
        ChildSpec("executor", executor, executor_socket, "strata.v1.Executor"),
        ChildSpec("scheduler", scheduler, f"{args.host}:{args.port}", "strata.v1.Generation", 120.0),
    ]


def serve(args: argparse.Namespace, on_ready: Callable[[str, threading.Event, Supervisor], int]) -> int:
    """Start the children, call on_ready(address, stop, supervisor), then stop everything."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args.data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    log_dir = args.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="strata-"))   # mode 0700; short for socket paths
    supervisor = Supervisor(log_dir)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for spec in child_specs(args, run_dir):
            supervisor.start(spec, stop.is_set)
        address = f"{args.host}:{args.port}"
        print(f"strata serving on {address}", flush=True)
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


def main(argv: list[str]) -> int:
    return serve(build_parser("strata up").parse_args(argv), keep_serving)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_main(argv: list[str]) -> int:
    parser = build_parser("strata demo")
    parser.add_argument("--prompt", default=DEMO_PROMPT)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.set_defaults(port=0)
    args = parser.parse_args(argv)
    args.port = args.port or free_port()

    def run_once(address: str, stop: threading.Event, supervisor: Supervisor) -> int:
        request = generation_pb2.GenerateRequest(text=args.prompt)
        request.sampling.temperature = 0.8
        request.sampling.seed = 0
        request.stopping.max_tokens = args.max_tokens
        request.stopping.ignore_eos = True
        with grpc.insecure_channel(address) as channel:
            print(args.prompt, end="", flush=True)
            summary = stream_completion(generation_pb2_grpc.GenerationStub(channel), request, sys.stdout)
        print("\n" + summary.line(), flush=True)
        return 0

    return serve(args, run_once)
