"""What the OpenAI-HTTP gateway costs over direct gRPC, measured on one `strata up`:

    python -m bench.gateway_overhead [--model DIR] [--concurrency 64] [--num-prompts 256]

Starts one `strata up --http-port P --no-prefix-caching` (every run computes the same prompts
from scratch, so the runs are alike), then alternates the same random workload at --concurrency
streams through strata.v1.Generation (bench.driver) and through POST /v1/completions
(bench.openai_client): grpc, gateway, gateway, grpc, ... (--alternations pairs, each pair in the
other order than the last, so a drift of the machine falls on both sides). A short warm-up of
each goes first and is not counted. Prints the gateway/gRPC output-throughput ratio (target
>= 0.95) and the TTFT p50 difference (target < 5 ms) over every counted run of each side.
Without --model it builds the ~100M random Llama (bench.make_model) under --out, as
bench.readme_table does. The client runs on the same CPUs as the server, on both sides.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from bench import environment, make_model, metrics, openai_client
from bench.driver import RunResult, get_model_info, run_workload
from bench.launch import LaunchError, ServerProcess, free_port
from bench.workloads import TokenSource, parse_range, random_sessions
from strata.launcher import is_http_ready

SIDES = ("grpc", "gateway")
NUM_WARMUP_PROMPTS = 8
TARGET_RATIO, TARGET_TTFT_MS = 0.95, 5.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gateway_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint directory (default: the ~100M bench model under --out)")
    p.add_argument("--out", default="bench-results", help="where the default model is built")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--input-len", default="128:512", help="LOW:HIGH prompt tokens")
    p.add_argument("--output-len", default="128", help="LOW:HIGH output tokens")
    p.add_argument("--alternations", type=int, default=3, help="counted runs of each side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server-args", default="", help="extra `strata up` flags (one string)")
    p.add_argument("--launch-timeout", type=float, default=600.0)
    p.add_argument("--json", help="write every run's metrics and the summary to this file")
    return p


def wait_http_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_http_ready(url):
            return
        time.sleep(0.25)
    raise LaunchError(f"the gateway at {url} did not answer 200 within {timeout_s:.0f} s")


def side_order(index: int) -> tuple[str, ...]:
    return SIDES if index % 2 == 0 else SIDES[::-1]


async def alternate(args, target: str, endpoint: openai_client.Endpoint, model_dir: str) -> dict[str, list[RunResult]]:
    """Every counted run of each side, in the order they ran."""
    info = await get_model_info(target)
    source = TokenSource(info.vocab_size, list(info.eos_token_ids), args.seed)
    sessions = random_sessions(source, args.num_prompts, parse_range(args.input_len), parse_range(args.output_len))
    served = await openai_client.get_served_model(endpoint, model_dir)
    runners = {"grpc": functools.partial(run_workload, target),
               "gateway": functools.partial(openai_client.run_workload, endpoint, served.model_id)}
    runs: dict[str, list[RunResult]] = {side: [] for side in SIDES}
    for side in SIDES:
        warmup = sessions[:NUM_WARMUP_PROMPTS]
        checked(side, await runners[side](lambda g: g.run(warmup, [0.0] * len(warmup)), args.concurrency,
                                          lambda: None, tag=f"warmup-{side}"))
    for index in range(args.alternations):
        for side in side_order(index):
            run = checked(side, await runners[side](lambda g: g.run(sessions, [0.0] * len(sessions)),
                                                    args.concurrency, lambda: None, tag=f"{side}-{index}"))
            runs[side].append(run)
            print(f"run {index} {side:<7} {run_line(run)}", flush=True)
    return runs


def checked(side: str, run: RunResult) -> RunResult:
    errors = sorted({t.error for t in run.traces if not t.is_ok and t.error})
    if any(not t.is_ok for t in run.traces):
        raise SystemExit(f"gateway_overhead: {side} requests failed, e.g. {errors[:3]}")
    return run


def output_throughput(runs: list[RunResult]) -> float:
    """Output tokens over wall time, summed over the runs."""
    return sum(t.num_output_tokens for r in runs for t in r.traces) / sum(r.duration_s for r in runs)


def ttft_p50_ms(runs: list[RunResult]) -> float:
    return float(np.percentile([metrics.ttft_s(t) for r in runs for t in r.traces], 50)) * 1e3


def run_line(run: RunResult) -> str:
    return (f"{output_throughput([run]):8.1f} output tok/s, TTFT p50 {ttft_p50_ms([run]):8.1f} ms, "
            f"{run.duration_s:.2f} s")


def summarize(runs: dict[str, list[RunResult]]) -> dict:
    sides = {side: {"output_throughput_tok_s": output_throughput(runs[side]), "ttft_p50_ms": ttft_p50_ms(runs[side]),
                    "runs": [metrics.run_metrics(r.traces, r.duration_s, None) for r in runs[side]]}
             for side in SIDES}
    ratio = sides["gateway"]["output_throughput_tok_s"] / sides["grpc"]["output_throughput_tok_s"]
    difference = sides["gateway"]["ttft_p50_ms"] - sides["grpc"]["ttft_p50_ms"]
    return {"sides": sides, "throughput_ratio": ratio, "ttft_p50_difference_ms": difference,
            "is_ratio_met": ratio >= TARGET_RATIO, "is_ttft_met": difference < TARGET_TTFT_MS}


def report(args, summary: dict, machine: dict) -> str:
    met = {True: "met", False: "missed"}
    lines = [f"Machine: {environment.machine_summary(machine)}; {datetime.date.today().isoformat()}; "
             f"{args.num_prompts} prompts, {args.input_len} in, {args.output_len} out, {args.concurrency} streams, "
             f"{args.alternations} runs a side"]
    for side in SIDES:
        entry = summary["sides"][side]
        lines.append(f"{side:<8} {entry['output_throughput_tok_s']:8.1f} output tok/s  "
                     f"TTFT p50 {entry['ttft_p50_ms']:8.1f} ms")
    lines.append(f"gateway/gRPC throughput {summary['throughput_ratio']:.3f} (target >= {TARGET_RATIO}: "
                 f"{met[summary['is_ratio_met']]}); TTFT p50 {summary['ttft_p50_difference_ms']:+.1f} ms "
                 f"(target < {TARGET_TTFT_MS:g} ms: {met[summary['is_ttft_met']]})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    model_dir = args.model or str(Path(args.out) / "model")
    if not args.model:
        make_model.main([model_dir])
    http_port = free_port()
    server_args = ["--model", model_dir, "--http-port", str(http_port), "--no-prefix-caching",
                   *shlex.split(args.server_args)]
    endpoint = openai_client.endpoint_of(f"http://127.0.0.1:{http_port}", os.environ.get("STRATA_API_KEY"), None)
    try:
        with ServerProcess(server_args, args.launch_timeout) as server:
            wait_http_ready(f"{endpoint.base_url}/health", args.launch_timeout)
            runs = asyncio.run(alternate(args, server.target, endpoint, model_dir))
    except (LaunchError, ValueError) as error:
        print(f"gateway_overhead: {error}", file=sys.stderr)
        return 2
    summary, machine = summarize(runs), environment.machine()
    print(report(args, summary, machine))
    if args.json:
        Path(args.json).write_text(json.dumps({"command": ["python", "-m", "bench.gateway_overhead", *argv],
                                               "machine": machine, **summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
