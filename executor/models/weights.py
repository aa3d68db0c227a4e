"""Read a checkpoint's safetensors into fused per-layer tensors, checking every name and shape.

Fusion at load time (q|k|v -> one matrix, gate|up -> one matrix) halves the number of matmuls
per layer, which is what matters on a CPU at small batch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from executor.errors import CheckpointError
from executor.models.config import ModelConfig


@dataclass(slots=True)
class LayerWeights:
    input_norm: torch.Tensor
    qkv: torch.Tensor  # [(heads + 2 * kv_heads) * head_dim, hidden]
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o_proj: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    down: torch.Tensor


@dataclass(slots=True)
class ModelWeights:
    embed: torch.Tensor
    layers: list[LayerWeights]
    final_norm: torch.Tensor
    lm_head: torch.Tensor  # the embedding itself when tied


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / name for name in names]
        missing = [str(f.name) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are missing: {missing}; re-download them")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir} has no *.safetensors weights: save the model with "
                              "save_pretrained(..., safe_serialization=True) (.bin is not supported)")
    return files


class _TensorReader:
    """Name -> tensor over all shards, cast to the compute dtype, with shape checks."""

    def __init__(self, files: list[Path], dtype: torch.dtype, device: torch.device):
        from safetensors import safe_open

        self.dtype, self.device = dtype, device
        self.handles = [safe_open(str(f), framework="pt") for f in files]
        self.location = {name: handle for handle in self.handles for name in handle.keys()}

    def has(self, name: str) -> bool:
        return name in self.location

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self.location:
            raise CheckpointError(f"checkpoint is missing tensor {name!r} (expected shape {list(shape)}); "
                                  "the weights do not match config.json's architecture")
        tensor = self.location[name].get_tensor(name)
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(f"tensor {name!r} has shape {list(tensor.shape)} but config.json implies "
                                  f"{list(shape)}; fix config.json or use the matching weights")
        return tensor.to(device=self.device, dtype=self.dtype)


def load_weights(model_dir: Path, config: ModelConfig, dtype: torch.dtype,
                 device: torch.device) -> ModelWeights:
    reader = _TensorReader(safetensors_files(model_dir), dtype, device)
    hidden, vocab = config.hidden_size, config.vocab_size
    embed = reader.get("model.embed_tokens.weight", (vocab, hidden))
    # Tied, or lm_head omitted by the saver: the embedding is the output projection.
    is_own_head = reader.has("lm_head.weight") and not config.is_tied
    lm_head = reader.get("lm_head.weight", (vocab, hidden)) if is_own_head else embed
    layers = [_load_layer(reader, config, i) for i in range(config.num_layers)]
    return ModelWeights(embed=embed, layers=layers,
                        final_norm=reader.get("model.norm.weight", (hidden,)), lm_head=lm_head)


def _load_layer(reader: _TensorReader, config: ModelConfig, index: int) -> LayerWeights:
    prefix = f"model.layers.{index}."
    hidden, head_dim = config.hidden_size, config.head_dim
    q_size, kv_size = config.num_heads * head_dim, config.num_kv_heads * head_dim
    attn = prefix + "self_attn."
    qkv = torch.cat([reader.get(attn + "q_proj.weight", (q_size, hidden)),
                     reader.get(attn + "k_proj.weight", (kv_size, hidden)),
                     reader.get(attn + "v_proj.weight", (kv_size, hidden))])
    qkv_bias = None
    if config.has_qkv_bias:
        qkv_bias = torch.cat([reader.get(attn + "q_proj.bias", (q_size,)),
                              reader.get(attn + "k_proj.bias", (kv_size,)),
                              reader.get(attn + "v_proj.bias", (kv_size,))])
    inter = config.intermediate_size
    mlp = prefix + "mlp."
    return LayerWeights(
        input_norm=reader.get(prefix + "input_layernorm.weight", (hidden,)),
        qkv=qkv, qkv_bias=qkv_bias,
        q_norm=reader.get(attn + "q_norm.weight", (head_dim,)) if config.has_qk_norm else None,
        k_norm=reader.get(attn + "k_norm.weight", (head_dim,)) if config.has_qk_norm else None,
        o_proj=reader.get(attn + "o_proj.weight", (hidden, q_size)),
        o_bias=reader.get(attn + "o_proj.bias", (hidden,)) if config.has_o_bias else None,
        post_norm=reader.get(prefix + "post_attention_layernorm.weight", (hidden,)),
        gate_up=torch.cat([reader.get(mlp + "gate_proj.weight", (inter, hidden)),
                           reader.get(mlp + "up_proj.weight", (inter, hidden))]),
        down=reader.get(mlp + "down_proj.weight", (hidden, inter)))
