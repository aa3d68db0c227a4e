"""How much prefill a multiturn workload leaves to save: the prompt tokens each turn computes.

    python -m bench.reuse_bound [--block-size 16] [--fixed-tokens 0] [--vocab-size 32000]
                                [strata bench's multiturn flags: --sessions, --turns, --system-len,
                                 --user-len, --output-len, --seed]

The same sessions `strata bench --workload multiturn` sends (its own parser reads the workload
flags, with its defaults), every output at its max_tokens. Per turn, the tokens computed before
its first token under three regimes:
- no-reuse: the whole prompt (`--no-prefix-caching`);
- recompute: all but the shared system prompt's full blocks (the device prefix cache keeps the
  system prompt; the rest of the history was evicted, as when the KV working set is many times
  the device pool);
- full-reuse: all but the full blocks of the history (every earlier turn's pages come back from
  a tier at no cost).
With a TTFT proportional to the tokens computed and no queueing, the ratio of two regimes'
percentiles is the most a config can gain over another; a fixed cost per turn (--fixed-tokens,
in tokens) lowers it. Pure arithmetic, no server.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from bench import options
from bench.workloads import build_sessions

REGIMES = ("no-reuse", "recompute", "full-reuse")


def computed_tokens(sessions, block_size: int) -> dict[str, list[int]]:
    """Prompt tokens computed per turn (in send order within each session), per regime."""
    result: dict[str, list[int]] = {regime: [] for regime in REGIMES}
    for session in sessions:
        shared = len(session.prefix_ids) // block_size * block_size
        history = len(session.prefix_ids)
        for turn in session.turns:
            prompt = history + len(turn.user_ids)
            # KV exists for every history token but the last output (never fed back), and only
            # full blocks are kept.
            reusable = max(shared, (history - 1) // block_size * block_size)
            result["no-reuse"].append(prompt)
            result["recompute"].append(prompt - shared)
            result["full-reuse"].append(prompt - reusable)
            history = prompt + turn.max_tokens
    return result


def percentile_ratios(numerator: list[int], denominator: list[int], fixed_tokens: float = 0.0) -> dict[str, float]:
    """p50 / p90 / p99 of (fixed + numerator) over the same percentile of (fixed + denominator)."""
    top, bottom = np.asarray(numerator, float) + fixed_tokens, np.asarray(denominator, float) + fixed_tokens
    return {f"p{q}": float(np.percentile(top, q) / np.percentile(bottom, q)) for q in (50, 90, 99)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reuse_bound", description=__doc__.splitlines()[0],
                                     epilog="Other flags: strata bench's multiturn workload flags.")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=32000, help="only draws the ids; lengths do not depend on it")
    parser.add_argument("--fixed-tokens", type=float, default=0.0,
                        help="a per-turn cost that does not shrink with reuse, in tokens of prefill")
    args, workload_argv = parser.parse_known_args(argv)
    workload, _ = options.parse(["--workload", "multiturn", *workload_argv])
    sessions = build_sessions(workload, args.vocab_size, [])
    tokens = computed_tokens(sessions, args.block_size)
    print(f"{len(tokens['no-reuse'])} turns; prompt tokens computed per turn:")
    for regime in REGIMES:
        values = np.asarray(tokens[regime])
        print(f"  {regime:<11} p50 {np.percentile(values, 50):7.0f}  p99 {np.percentile(values, 99):7.0f}")
    for top, bottom in (("recompute", "full-reuse"), ("no-reuse", "full-reuse")):
        ratios = percentile_ratios(tokens[top], tokens[bottom], args.fixed_tokens)
        print(f"{top} / {bottom}: " + ", ".join(f"{name} {value:.2f}x" for name, value in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
