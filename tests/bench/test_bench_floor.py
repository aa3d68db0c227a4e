"""bench/floor.py: the random workload's projection FLOPs, counted at their least."""
from types import SimpleNamespace

from bench.floor import flops, main, workload_rows
from bench.workloads import build_sessions
from executor.models.config import parse_config

TINY = parse_config({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
                     "vocab_size": 512, "max_position_embeddings": 256})


def test_flops_by_hand():
    # Per row: qkv 2*64*(4+2+2)*16 = 16384, o 2*64*64 = 8192, gate_up 2*64*256 = 32768,
    # down 2*128*64 = 16384, LM head 2*64*512 = 65536. 10 prompt tokens over 2 prompts, 6 output
    # tokens: the last layer's o/MLP see 2 of the 10 prompt rows; 4 output tokens are decoded.
    counted = flops(TINY, prompt_tokens=10, output_tokens=6, num_prompts=2)
    assert counted["prefill"] == {"qkv": 2 * 10 * 16384, "o": 12 * 8192, "gate_up": 12 * 32768,
                                  "down": 12 * 16384, "lm_head": 2 * 65536}
    assert counted["decode"] == {"qkv": 2 * 4 * 16384, "o": 2 * 4 * 8192, "gate_up": 2 * 4 * 32768,
                                 "down": 2 * 4 * 16384, "lm_head": 4 * 65536}


def test_workload_rows_are_strata_bench_s_prompts():
    args = SimpleNamespace(workload="random", seed=3, num_prompts=5, input_len="20:40", output_len="7")
    sessions = build_sessions(args, TINY.vocab_size, TINY.eos_token_ids)
    expected = sum(len(s.turns[0].user_ids) for s in sessions)
    assert workload_rows(TINY, 5, "20:40", "7", seed=3) == (expected, 35)


def test_cli_prints_a_floor_per_dtype(tmp_path, capsys):
    (tmp_path / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2, '
        '"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, '
        '"vocab_size": 512, "max_position_embeddings": 256}')
    assert main(["--model", str(tmp_path), "--num-prompts", "2", "--input-len", "5", "--output-len", "3",
                 "--threads", "1", "--dtype", "float32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("random workload: 2 prompts, 10 prompt tokens, 6 output tokens")
    row = lines[2].split()
    assert row[0] == "float32" and float(row[3]) > 0
    assert abs(float(row[4]) - 6 / float(row[3])) <= 1e-3 * float(row[4])   # seconds print 4 digits
