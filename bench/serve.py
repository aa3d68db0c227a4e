"""`strata bench`: serving benchmark through the public API, with same-run baselines.

For each server configuration (one running server, or one `strata up` per --compare entry,
launched, measured and stopped in turn) and each request rate, run the workload, then the
baselines (vLLM-CPU per --vllm-dtype, transformers; after every server is stopped, so they never
share the CPU), then print a side-by-side table and write --json / --plot.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import sys
from pathlib import Path
from typing import Awaitable, Callable, NamedTuple

from tqdm import tqdm

from bench import environment, metrics, options, report, server_stats, vllm_baseline
from bench.driver import RunResult, get_model_info, run_workload
from bench.launch import LaunchError, ServerProcess
from bench.workloads import Session, arrival_offsets, build_sessions
from executor.daemon import num_usable_cores   # torch-free: the executor imports torch late


class SharedPrompts:
    """What every configuration runs: the sessions (built once from the first server's
    vocabulary, so every configuration gets the same prompts) and the model info."""

    def __init__(self, args):
        self.args = args
        self.sessions: list[Session] | None = None
        self.model_info = None
        self.first_run: RunResult | None = None

    def sessions_for(self, model_info) -> list[Session]:
        if self.sessions is None:
            self.model_info = model_info
            self.sessions = build_sessions(self.args, model_info.vocab_size, list(model_info.eos_token_ids))
            longest = max(s.max_context_len for s in self.sessions)
            if model_info.max_model_len and longest > model_info.max_model_len:
                raise ValueError(f"workload needs {longest} tokens of context but the model serves "
                                 f"{model_info.max_model_len}: shorten the lengths or the turns")
        elif model_info.vocab_size != self.model_info.vocab_size:
            raise ValueError("--compare configurations serve models with different vocabularies; "
                             "compare configurations of one model")
        return self.sessions

    @property
    def num_requests(self) -> int:
        return sum(len(s.turns) for s in self.sessions)


def _rate_name(config_name: str, rate: float, num_rates: int) -> str:
    return config_name if num_rates == 1 else f"{config_name}@{rate:g}rps"


def _drive(args, sessions: list[Session], offsets: list[float]):
    """How the load generator runs the sessions: turn by turn (--turn-barrier) or as they arrive."""
    if args.turn_barrier:
        return lambda generator: generator.run_turn_by_turn(sessions)
    return lambda generator: generator.run(sessions, offsets)


class Backend(NamedTuple):
    """How a configuration is measured: its model info and one run of a workload."""
    model_info: Callable[[], Awaitable]
    run: Callable[..., Awaitable[RunResult]]   # (drive, max_concurrency, on_done, tag=, request_timeout_s=)


def backend_of(args, target: str) -> Backend:
    """ValueError when the OpenAI server or the checkpoint cannot be read."""
    if args.backend == "openai":
        from bench import openai_client   # httpx2: only the HTTP backend needs it

        endpoint = openai_client.endpoint_of(args.base_url, args.api_key, args.model, args.return_token_ids)
        model = asyncio.run(openai_client.get_served_model(endpoint, args.model_dir))
        return Backend(_constant(model), functools.partial(openai_client.run_workload, endpoint, model.model_id))
    return Backend(functools.partial(get_model_info, target), functools.partial(run_workload, target))


def _constant(value):
    async def get():
        return value
    return get


async def _run_config(args, prompts: SharedPrompts, config: options.ServerConfig, backend: Backend,
                      server: ServerProcess | None) -> list[report.ConfigResult]:
    sessions = prompts.sessions_for(await backend.model_info())
    results = []
    for rate in args.rates:
        name = _rate_name(config.name, rate, len(args.rates))
        offsets = arrival_offsets(len(sessions), rate, args.seed)
        drive = _drive(args, sessions, offsets)
        with tqdm(total=prompts.num_requests, desc=name, unit="req", disable=args.no_progress) as bar:
            run = await backend.run(drive, args.max_concurrency, lambda: bar.update(1), tag=name,
                                    request_timeout_s=args.request_timeout)
        prompts.first_run = prompts.first_run or run
        results.append(_result(args, name, config, rate, run, server))
    return results


def _result(args, name, config, rate, run: RunResult, server) -> report.ConfigResult:
    values = metrics.run_metrics(run.traces, run.duration_s, args.slo_bounds)
    values.update(server_stats.server_metrics(run.stats_before, run.stats_after))
    if run.turn_wall_s is not None:
        values.update(metrics.turn_wall_metrics(run.turn_wall_s))
    settings = {"config": config.name, "server_args": config.server_args,
                "server_target": None if server else _target(args), "request_rate": rate,
                "max_concurrency": args.max_concurrency,
                "server_startup_s": server.startup_s if server else None}
    ttfts = [metrics.ttft_s(t) for t in run.traces if t.is_ok]
    errors = sorted({t.error for t in run.traces if t.error})[:5]
    if errors:
        values["errors"] = errors
    return report.ConfigResult(name, values, settings, ttfts)


def _target(args) -> str:
    return args.base_url if args.backend == "openai" else args.server


def run_servers(args) -> tuple[SharedPrompts, list[report.ConfigResult]]:
    prompts, results = SharedPrompts(args), []
    for config in args.configs:
        launched = ServerProcess(config.server_args, args.launch_timeout) if args.launch else None
        with launched or contextlib.nullcontext():
            backend = backend_of(args, launched.target if launched else args.server)
            results += asyncio.run(_run_config(args, prompts, config, backend, launched))
    return prompts, results


def default_hf_threads(server_args: list[str]) -> int:
    """The executor's torch threads, so both sides compute with the same: its --num-threads
    when the server args give one, else the executor's default (every usable core)."""
    for flag, value in zip(server_args, server_args[1:]):
        if flag == "--num-threads":
            return int(value)
    return num_usable_cores()


def run_vllm(args, prompts: SharedPrompts) -> list[report.ConfigResult]:
    """One vLLM-CPU run per --vllm-dtype on the sessions every configuration was given."""
    venv = Path(args.vllm_venv) if args.vllm_venv else vllm_baseline.default_venv_dir()
    setup = vllm_baseline.VllmSetup(vllm_baseline.ensure_venv(venv),
                                    args.vllm_threads or num_usable_cores(),
                                    args.vllm_kv_cache_memory, vllm_baseline.tcmalloc_path())
    print(f"vllm baseline: {setup.num_threads} threads, KV cache {setup.kv_cache_memory_bytes / 2**20:.0f} MiB, "
          f"libtcmalloc {setup.tcmalloc or 'not installed (apt-get install libtcmalloc-minimal4)'}", flush=True)
    results = []
    for dtype in args.vllm_dtype:
        print(f"vllm baseline: {dtype} on {prompts.num_requests} requests ...", flush=True)
        result = vllm_baseline.run_baseline(setup, args.model, dtype, prompts.sessions, args.seed)
        print(f"vllm baseline: {result.name}: start-up {result.metrics['startup_s']:.1f} s (not counted), "
              f"generate {result.metrics['duration_s']:.2f} s", flush=True)
        results.append(result)
    return results


def run_hf(args, prompts: SharedPrompts) -> list[report.ConfigResult]:
    from bench.hf_baseline import run_hf_baseline

    requests = [(s.prompt_ids, s.max_tokens) for s in prompts.first_run.sent if s.trace.is_ok]
    threads = args.hf_threads or default_hf_threads(args.configs[0].server_args or [])
    with tqdm(total=len(requests), desc="hf", unit="req", disable=args.no_progress) as bar:
        values = run_hf_baseline(args.model, requests, args.hf_batch_size, threads, bar.update)
    return [report.ConfigResult("hf", values, {"config": "hf", "model": args.model})]


def run_baselines(args, prompts: SharedPrompts) -> list[report.ConfigResult]:
    """--baseline's runs, vLLM's first (its results are the first reference after Strata's own)."""
    runs = {"vllm": run_vllm, "hf": run_hf}
    return [result for name in args.baseline for result in runs[name](args, prompts)]


def header(args, argv: list[str], prompts: SharedPrompts) -> dict:
    info = prompts.model_info
    workload = {key: getattr(args, key) for key in (
        "workload", "seed", "num_prompts", "input_len", "output_len", "sessions", "turns",
        "system_len", "user_len", "docs", "doc_len", "questions", "question_len", "prefix_len",
        "suffix_len", "request_rate", "max_concurrency", "turn_barrier", "slo", "backend")}
    workload["num_requests"] = prompts.num_requests
    return {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": ["strata", "bench", *argv], "workload": workload,
            "model": None if info is None else {
                "model_id": info.model_id, "architecture": info.architecture, "dtype": info.dtype,
                "device": info.device, "vocab_size": info.vocab_size,
                "max_model_len": info.max_model_len, "block_size": info.block_size},
            "versions": environment.package_versions(), "threads": environment.thread_settings(),
            "machine": environment.machine()}


def main(argv: list[str]) -> int:
    """Run the benchmark; 0 when every request completed, 1 when some failed, 2 on setup errors."""
    args, _ = options.parse(argv)
    try:
        prompts, results = run_servers(args)
    except (LaunchError, ValueError) as error:
        print(f"strata bench: {error}", file=sys.stderr)
        return 2
    try:
        baselines = run_baselines(args, prompts)
    except vllm_baseline.BaselineError as error:
        print(f"strata bench: {error}", file=sys.stderr)
        return 2
    report.attach_ratios(results, baselines)
    print(report.format_table(results + baselines))
    if args.json:
        content = report.document(results, baselines, header(args, argv, prompts))
        report.write_json(args.json, content)
    if args.plot:
        from bench.plot import plot

        plot(args.plot, results, f"strata bench: {args.workload}")
    num_failed = sum(r.metrics["num_failed"] for r in results)
    if num_failed:
        errors = [e for r in results for e in r.metrics.get("errors", [])]
        print(f"strata bench: {num_failed} requests failed, e.g. {errors[:3]}", file=sys.stderr)
    return 1 if num_failed else 0
