"""bench/reuse_bound.py: the prompt tokens each multiturn turn computes under each reuse regime."""
import pytest

from bench.reuse_bound import computed_tokens, main, percentile_ratios
from bench.workloads import Session, Turn


def test_computed_tokens_per_regime_by_hand():
    # System prompt 20 tokens (one full block of 16), then turns of 10 + 5 and 7 + 5 tokens.
    session = Session(list(range(20)), [Turn(list(range(10)), 5), Turn(list(range(7)), 5)])
    tokens = computed_tokens([session], block_size=16)
    # Turn 1: prompt 30; only the system prompt's block exists. Turn 2: prompt 42; the history
    # (35 tokens, 34 with KV) has 2 full blocks.
    assert tokens == {"no-reuse": [30, 42], "recompute": [14, 26], "full-reuse": [14, 10]}


def test_percentile_ratios_with_a_fixed_cost():
    assert percentile_ratios([40, 40], [10, 10]) == pytest.approx({"p50": 4.0, "p90": 4.0, "p99": 4.0})
    assert percentile_ratios([40, 40], [10, 10], fixed_tokens=10)["p50"] == pytest.approx(2.5)


def test_cli_prints_the_ratios(capsys):
    assert main(["--sessions", "4", "--turns", "3", "--system-len", "100", "--user-len", "20:40"]) == 0
    out = capsys.readouterr().out
    assert "12 turns" in out and "recompute / full-reuse: p50" in out
