"""Tiny real HF checkpoints and tokenizers, built locally for tests (no downloads).

    tokenizer_dir = train_tokenizer(tmp / "tok")             # byte-level BPE, EOS <|endoftext|> = 0
    model_dir = make_checkpoint(tmp / "llama", "llama", tokenizer_dir=tokenizer_dir)

A checkpoint is what `save_pretrained` writes (config.json + model.safetensors) plus the tokenizer
files, so every component reads it exactly as it would read a downloaded model.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from executor.tokenizer_training import eos_token_id, train_tokenizer, vocab_size_of

__all__ = ["train_tokenizer", "make_checkpoint", "ARCHITECTURES", "load_hf_model"]

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")

# Shared tiny shape. std 0.2 (not HF's 0.02) so random logits are peaked enough that greedy
# decoding walks through many different tokens instead of repeating one.
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=1024, initializer_range=0.2,
            rms_norm_eps=1e-6)


def _config(arch: str, vocab_size: int, eos_id: int, overrides: dict):
    import transformers

    fields = dict(TINY, vocab_size=vocab_size, eos_token_id=eos_id, bos_token_id=None,
                  pad_token_id=None)
    if arch == "llama":
        fields.update(tie_word_embeddings=False, rope_theta=10000.0)
        config_class = transformers.LlamaConfig
    elif arch == "mistral":
        fields.update(tie_word_embeddings=False, sliding_window=None, rope_theta=10000.0)
        config_class = transformers.MistralConfig
    elif arch == "qwen2":
        fields.update(tie_word_embeddings=True, rope_theta=1000000.0, use_sliding_window=False)
        config_class = transformers.Qwen2Config
    elif arch == "qwen3":
        fields.update(tie_word_embeddings=False, head_dim=32, rope_theta=1000000.0,
                      use_sliding_window=False)
        config_class = transformers.Qwen3Config
    else:
        raise ValueError(f"unknown test architecture {arch!r}; choose one of {ARCHITECTURES}")
    fields.update(overrides)
    return config_class(**fields)


def make_checkpoint(out_dir: str | Path, arch: str = "llama", *, tokenizer_dir: str | Path | None = None,
                    dtype: torch.dtype = torch.float32, seed: int = 0, **config_overrides) -> Path:
    """Save a tiny random `arch` model (save_pretrained, safetensors) + tokenizer into out_dir.

    Deterministic for a given seed. Overrides go straight into the transformers config, e.g.
    `rope_scaling={"rope_type": "llama3", ...}` or `num_hidden_layers=3`.
    """
    import transformers

    out = Path(out_dir)
    if tokenizer_dir is None:
        tokenizer_dir = train_tokenizer(out / "_tokenizer")
    tokenizer_dir = Path(tokenizer_dir)
    config = _config(arch, vocab_size_of(tokenizer_dir), eos_token_id(tokenizer_dir), config_overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _perturb_norms(model, seed)
    model = model.to(dtype)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / name, out / name)
    shutil.rmtree(out / "_tokenizer", ignore_errors=True)
    return out


def _perturb_norms(model, seed: int) -> None:
    """Norm weights and biases init to exactly 1 / 0; randomise them so a loader that skips
    one of them (or applies it to the wrong tensor) fails parity instead of passing by luck."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            elif name.endswith(".bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def load_hf_model(model_dir: str | Path):
    """The transformers reference model for parity tests (fp32, eval mode)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval()
