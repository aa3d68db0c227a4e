"""The built-in default model: a small random Llama so `strata up` works with no download.

Built once (deterministic: fixed seed, tokenizer trained on stdlib sources) under
<data-dir>/models/strata-tiny-random/, written to a temp dir and renamed into place so two
processes racing to build it never leave a half-written model. The weights are random: the
output is gibberish, the point is to exercise the serving path.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

NAME = "strata-tiny-random"
SEED = 1234
VOCAB_SIZE = 4096
SHAPE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=768, max_position_embeddings=2048)
# A minimal chat format (zephyr-like), so /v1/chat/completions works on the built-in model:
# each message as <|role|>, newline, content, EOS; the generation prompt opens the assistant's turn.
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] "
                 "+ eos_token + '\\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
CHAT_TEMPLATE_FILE = "chat_template.jinja"
README = f"""# {NAME}

A small Llama-shaped model with RANDOM weights (seed {SEED}), built locally by Strata's executor
so that the serving stack runs without downloading anything. Its output is gibberish.
Pass `--model DIR` (a save_pretrained directory) to serve a real model.
"""


def default_data_dir() -> Path:
    return Path(os.environ.get("STRATA_DATA_DIR") or Path.home() / ".cache" / "strata")


def ensure_default_model(data_dir: Path) -> Path:
    """Path of the built-in model under data_dir, building it first if it is not there yet."""
    target = Path(data_dir) / "models" / NAME
    if (target / "config.json").is_file():
        write_chat_template(target)   # a model built before the template existed gets it now
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=target.parent))
    try:
        build_default_model(staging)
        try:
            staging.rename(target)
            log.info("built the default random model in %s", target)
        except OSError:
            if not (target / "config.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_chat_template(model_dir: Path) -> None:
    path = Path(model_dir) / CHAT_TEMPLATE_FILE
    if not path.is_file():
        try:
            path.write_text(CHAT_TEMPLATE)
        except OSError as error:   # a read-only model dir (an image): serve it without chat
            log.warning("could not write %s: %s", path, error)


def build_default_model(out_dir: Path) -> None:
    """Write tokenizer + config.json + model.safetensors (HF names) into out_dir."""
    import torch
    from safetensors.torch import save_file

    from executor.tokenizer_training import eos_token_id, train_tokenizer, vocab_size_of

    train_tokenizer(out_dir, vocab_size=VOCAB_SIZE)
    config = dict(SHAPE, architectures=["LlamaForCausalLM"], model_type="llama",
                  vocab_size=vocab_size_of(out_dir), eos_token_id=eos_token_id(out_dir),
                  bos_token_id=None, rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu",
                  tie_word_embeddings=False, torch_dtype="float32", initializer_range=0.02,
                  strata_note="random weights: output is gibberish")
    generator = torch.Generator().manual_seed(SEED)
    tensors = {name: _init(shape, name, generator) for name, shape in _tensor_shapes(config).items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "README.md").write_text(README)
    write_chat_template(out_dir)


def _init(shape, name: str, generator):
    import torch

    if name.endswith("norm.weight"):
        return torch.ones(shape)
    # std 0.08 (not 0.02): random logits then have a clear top token, so greedy output varies.
    return torch.randn(shape, generator=generator) * 0.08


def _tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    head_dim = hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                   p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                   p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                   p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                   p + "mlp.down_proj.weight": (hidden, inter)}
    return shapes
