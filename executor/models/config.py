"""The parts of an HF config.json that the executor's model code needs, validated once."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from executor.errors import CheckpointError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                           "Qwen3ForCausalLM")
SUPPORTED_ROPE_TYPES = ("default", "llama3")


@dataclass(slots=True)
class RopeConfig:
    theta: float
    rope_type: str  # one of SUPPORTED_ROPE_TYPES
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(slots=True)
class ModelConfig:
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_model_len: int
    rms_norm_eps: float
    rope: RopeConfig
    has_qkv_bias: bool
    has_o_bias: bool
    has_qk_norm: bool
    is_tied: bool
    torch_dtype: str  # the checkpoint's storage dtype name, e.g. "bfloat16"
    eos_token_ids: list[int]


def read_config(model_dir: Path) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir} has no config.json: pass --model a directory written by "
                              "save_pretrained (config.json + *.safetensors + tokenizer.json)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); fix or re-download it") from error
    return parse_config(raw, str(path))


def parse_config(raw: dict, where: str = "config.json") -> ModelConfig:
    architecture = _architecture(raw, where)
    if raw.get("mlp_bias"):
        raise CheckpointError(f"{where}: mlp_bias=true is not supported (no MLP biases in the executor)")
    try:
        num_heads = int(raw["num_attention_heads"])
        hidden_size = int(raw["hidden_size"])
        return ModelConfig(
            architecture=architecture, hidden_size=hidden_size,
            num_layers=int(raw["num_hidden_layers"]), num_heads=num_heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
            head_dim=int(raw.get("head_dim") or hidden_size // num_heads),
            intermediate_size=int(raw["intermediate_size"]), vocab_size=int(raw["vocab_size"]),
            max_model_len=_max_model_len(raw, where), rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope=_rope(raw, where),
            has_qkv_bias=architecture == "Qwen2ForCausalLM" or bool(raw.get("attention_bias")),
            has_o_bias=architecture != "Qwen2ForCausalLM" and bool(raw.get("attention_bias")),
            has_qk_norm=architecture == "Qwen3ForCausalLM",
            is_tied=bool(raw.get("tie_word_embeddings", False)),
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
            eos_token_ids=_eos_ids(raw.get("eos_token_id")))
    except KeyError as error:
        raise CheckpointError(f"{where} lacks required field {error.args[0]!r} for {architecture}") from error


def _architecture(raw: dict, where: str) -> str:
    names = raw.get("architectures") or []
    for name in names:
        if name in SUPPORTED_ARCHITECTURES:
            return name
    raise CheckpointError(f"{where}: unsupported architecture {names or raw.get('model_type')!r}; "
                          f"the executor supports {', '.join(SUPPORTED_ARCHITECTURES)}")


def _rope(raw: dict, where: str) -> RopeConfig:
    # transformers 5 writes `rope_parameters` (with rope_theta inside); 4.x writes `rope_scaling`.
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise CheckpointError(f"{where}: rope type {rope_type!r} is not supported; supported: "
                              f"{', '.join(SUPPORTED_ROPE_TYPES)} (or no rope_scaling)")
    theta = float(params.get("rope_theta") or raw.get("rope_theta") or 10000.0)
    if rope_type == "default":
        return RopeConfig(theta=theta, rope_type=rope_type)
    return RopeConfig(theta=theta, rope_type=rope_type, factor=float(params["factor"]),
                      low_freq_factor=float(params["low_freq_factor"]),
                      high_freq_factor=float(params["high_freq_factor"]),
                      original_max_position_embeddings=int(params["original_max_position_embeddings"]))


def _max_model_len(raw: dict, where: str) -> int:
    max_len = int(raw.get("max_position_embeddings") or 2048)
    window = raw.get("sliding_window")
    is_windowed = window is not None and raw.get("use_sliding_window", True)
    # Sliding-window attention is not implemented. Below the window it equals full attention,
    # so a windowed model is served with its length capped at the window instead of refused.
    if is_windowed and int(window) < max_len:
        return int(window)
    return max_len


def _eos_ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def llama3_inv_freq_factors(rope: RopeConfig, inv_freq):
    """Llama 3 frequency scaling: long wavelengths slowed by `factor`, short ones kept, smooth between."""
    low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
    high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = inv_freq / rope.factor
    smooth = ((rope.original_max_position_embeddings / wavelen - rope.low_freq_factor)
              / (rope.high_freq_factor - rope.low_freq_factor))
    smoothed = (1 - smooth) * scaled + smooth * inv_freq
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    result = inv_freq.where(wavelen < high_wavelen, scaled)
    return smoothed.where(is_medium, result)
