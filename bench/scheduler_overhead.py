"""Scheduler CPU time per step with many running requests, against the model-free executor.

    python -m bench.scheduler_overhead --num-running 256 --num-steps 200

Times `Scheduler.plan()` (policy + block allocation + building the StepPlan proto),
`StepPlan.SerializeToString()` (what the gRPC hop to the executor adds) and
`Scheduler.apply()` (append tokens, hash newly full blocks, stop checks) for each step; the fake
executor's own time is excluded. Goal: plan + apply < 1 ms per step at 256 running requests.

Scenarios: `decode` keeps every request decoding (the steady state); `churn` gives requests
short outputs, so every step some finish and new ones are admitted with a prompt to prefill.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np

from bench.fake_executor import FakeExecutor
from protos.v1 import common_pb2
from scheduler.block_hash import make_namespace
from scheduler.request import Request, StopCriteria
from scheduler.scheduler import Scheduler, SchedulerConfig

NAMESPACE = make_namespace("bench", "float32", (2, 2, 16, 2, 64), "")


class Bench:
    def __init__(self, args):
        self.args = args
        self.rng = np.random.default_rng(args.seed)
        self.arrivals = itertools.count()
        num_blocks = args.num_running * (-(-(args.prompt_len + args.num_steps * 2 + 64) // args.block_size))
        config = SchedulerConfig(args.block_size, num_blocks, args.max_num_batched_tokens,
                                 args.num_running, max_model_len=1 << 20)
        self.scheduler = Scheduler(config)
        self.executor = FakeExecutor(vocab_size=32000, block_size=args.block_size, num_blocks=num_blocks)

    def add_request(self, max_tokens: int) -> None:
        index = next(self.arrivals)
        prompt = self.rng.integers(1, 32000, size=self.args.prompt_len).tolist()
        self.scheduler.add_request(Request(
            f"r{index}", prompt, common_pb2.SamplingParams(temperature=0.0),
            StopCriteria(max_tokens=max_tokens, is_eos_ignored=True), NAMESPACE, index))

    def output_len(self) -> int:
        if self.args.scenario == "decode":
            return 1 << 30
        return int(self.rng.integers(8, 64))

    def step(self) -> tuple[float, float, float]:
        started = time.perf_counter()
        step = self.scheduler.plan()
        planned = time.perf_counter()
        step.plan.SerializeToString()
        serialized = time.perf_counter()
        result = self.executor.step(step.plan)
        applied_at = time.perf_counter()
        outputs = self.scheduler.apply(step, result)
        done = time.perf_counter()
        for _ in range(sum(o.is_final for o in outputs)):
            self.add_request(self.output_len())
        return planned - started, serialized - planned, done - applied_at

    def run(self) -> dict:
        for _ in range(self.args.num_running):
            self.add_request(self.output_len())
        while self.scheduler.num_running < self.args.num_running or self.scheduler.num_waiting:
            self.step()   # warm-up: admit and prefill everyone
        times = np.array([self.step() for _ in range(self.args.num_steps)]) * 1e3
        return summarize(self.args, times, self.scheduler.num_running)


def summarize(args, times_ms: np.ndarray, num_running: int) -> dict:
    def stats(values):
        return {"mean": float(values.mean()), "p50": float(np.percentile(values, 50)),
                "p99": float(np.percentile(values, 99))}

    overhead = times_ms[:, 0] + times_ms[:, 2]
    return {"scenario": args.scenario, "num_running": num_running, "num_steps": args.num_steps,
            "prompt_len": args.prompt_len, "block_size": args.block_size,
            "plan_ms": stats(times_ms[:, 0]), "serialize_ms": stats(times_ms[:, 1]),
            "apply_ms": stats(times_ms[:, 2]), "plan_plus_apply_ms": stats(overhead),
            "is_under_1ms": bool(np.percentile(overhead, 50) < 1.0)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.scheduler_overhead", description=__doc__.split("\n")[0])
    p.add_argument("--scenario", choices=["decode", "churn"], default="decode")
    p.add_argument("--num-running", type=int, default=256)
    p.add_argument("--num-steps", type=int, default=200)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the result to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = Bench(args).run()
    for key in ("plan_ms", "serialize_ms", "apply_ms", "plan_plus_apply_ms"):
        s = result[key]
        print(f"{key:<20} mean {s['mean']:.3f}  p50 {s['p50']:.3f}  p99 {s['p99']:.3f}")
    print(f"{result['num_running']} running, {args.scenario}: plan+apply p50 "
          f"{'<' if result['is_under_1ms'] else '>='} 1 ms")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
