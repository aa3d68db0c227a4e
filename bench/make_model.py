"""Write a random-weight Llama checkpoint + a locally trained tokenizer for serving benchmarks.

    python -m bench.make_model DIR [--shape 100m|small|tiny] [--seed 0]

DIR gets what `save_pretrained` writes (config.json + model.safetensors, fp32, untied
embeddings) and tokenizer.json + tokenizer_config.json: a byte-level BPE trained offline on the
stdlib's sources to exactly the model's vocabulary size, so a server and transformers load DIR
as they would a downloaded model. No network. The same --shape and --seed give the same
weights. If DIR already holds config.json the command says so and leaves it alone (exit 0).
Not a test.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: see MACHINE.md
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.executor_forward import SHAPE as SHAPE_100M  # noqa: E402  (after the thread policy)

# A few seconds end to end: for trying the benchmark's plumbing, not for figures.
SHAPE_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=512, max_position_embeddings=2048)
# Head size 64 (vLLM-CPU's attention takes 32-512, not tiny's 16): for trying `--baseline vllm`.
SHAPE_SMALL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=768, vocab_size=4096, max_position_embeddings=4096)
# 4096 positions: the multiturn workload (1,000-token system prompt, 6 turns) reaches ~2,400.
SHAPES = {"100m": {**SHAPE_100M, "max_position_embeddings": 4096}, "small": SHAPE_SMALL, "tiny": SHAPE_TINY}
# The stdlib's first ~1.5 MB yields ~19k BPE merges; 8 MB is past the 6 MB that 32000 needs.
NUM_CORPUS_BYTES = 8_000_000


def make_model(out_dir: str | Path, shape: dict, seed: int) -> Path:
    """Train the tokenizer, then save a random LlamaForCausalLM of `shape` into out_dir.

    Raises ValueError when the stdlib corpus cannot give a tokenizer of shape's vocab_size
    (the model's embedding rows and the tokenizer's ids must be the same set).
    """
    import torch
    import transformers

    from executor.tokenizer_training import eos_token_id, train_tokenizer, vocab_size_of

    out = Path(out_dir)
    train_tokenizer(out, vocab_size=shape["vocab_size"], num_corpus_bytes=NUM_CORPUS_BYTES)
    if vocab_size_of(out) != shape["vocab_size"]:
        raise ValueError(f"the tokenizer trained on the stdlib has {vocab_size_of(out)} tokens, not "
                         f"{shape['vocab_size']}: lower vocab_size or raise NUM_CORPUS_BYTES")
    config = transformers.LlamaConfig(**shape, tie_word_embeddings=False, eos_token_id=eos_token_id(out),
                                      bos_token_id=None, pad_token_id=None)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="output directory (created if missing)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="100m",
                        help="100m: hidden 768, 12 layers, 12 heads, 4 KV heads, inter 2048, vocab 32000")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the random weights")
    args = parser.parse_args(argv)
    out = Path(args.dir)
    if (out / "config.json").is_file():
        print(f"{out} already holds config.json: leaving it as it is")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    # Built aside and moved in with config.json last, so an interrupted run never leaves a DIR
    # that the next run would take as finished.
    staging = Path(tempfile.mkdtemp(prefix=".make_model-", dir=out))
    try:
        make_model(staging, SHAPES[args.shape], args.seed)
        for path in sorted(staging.iterdir(), key=lambda p: p.name == "config.json"):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    num_bytes = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {args.shape} model (seed {args.seed}) to {out}: {num_bytes / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
