"""The README table is formatted from the two benchmark documents (synthetic numbers)."""
from bench.readme_table import shrink, table, MULTITURN


def summary(p50, p99):
    return {"mean": p50, "p50": p50, "p90": p99, "p99": p99}


def test_table_shows_ratios_machine_and_every_configuration():
    machine = {"cpu_model": "Some CPU", "num_cpus": 2, "gpus": []}
    random_run = {"machine": machine,
                  "configurations": {"strata": {"output_throughput_tok_s": 200.0}},
                  "baselines": {"hf": {"output_throughput_tok_s": 50.0}}}
    configs = {name: {"ttft_ms": summary(p50, 2 * p50), "output_throughput_tok_s": 10.0,
                      "cached_token_fraction": fraction}
               for name, p50, fraction in (("recompute", 3000.0, 0.5), ("ram", 500.0, 0.9),
                                           ("ram+nvme", 600.0, 0.9))}
    text = table(random_run, {"configurations": configs}, seconds=600)
    assert "Some CPU, 2 cores, no GPU" in text and "took 10.0 min" in text
    assert "| Strata (continuous batching) | 200.0 | 4.00x |" in text
    assert "| ram | 500 | 1000 | 6.00x | 10.0 | 0.90 |" in text
    assert "| ram+nvme | 600 | 1200 | 5.00x |" in text


def test_quick_shrinks_sizes_only():
    quick = shrink(MULTITURN)
    assert quick[quick.index("--sessions") + 1] == "4" and quick[quick.index("--turns") + 1] == "2"
    assert quick[quick.index("--system-len") + 1] == "1000" and len(quick) == len(MULTITURN)
