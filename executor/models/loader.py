"""Checkpoint directory -> ready model: config, dtype choice, weights, identity."""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from executor.errors import CheckpointError
from kernels.cpu_features import BF16_FLAGS, bf16_flags
from executor.models.config import ModelConfig, read_config
from executor.models.transformer import CausalLM
from executor.models.weights import load_weights, safetensors_files

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(slots=True)
class LoadedModel:
    path: Path
    config: ModelConfig
    model: CausalLM
    model_id: str
    dtype: torch.dtype
    device: torch.device
    load_seconds: float


def model_id(model_dir: Path) -> str:
    """Hex digest of config.json's bytes and the safetensors files' names and sizes.

    Cheap (no weight bytes read) and stable across restarts and copies of the directory.
    """
    model_dir = Path(model_dir)
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    for path in safetensors_files(model_dir):
        digest.update(f"{path.name}:{path.stat().st_size};".encode())
    return digest.hexdigest()[:32]


def resolve_dtype(name: str, config: ModelConfig, device: torch.device) -> torch.dtype:
    """`auto`: the checkpoint's dtype on CUDA; on a CPU bf16 where it has AMX-BF16 or
    AVX512-BF16 (oneDNN's bf16 matmuls are 4-7x faster than fp32 there), fp32 elsewhere (bf16
    is emulated and ~300x slower). The choice and its reason are logged."""
    if name == "auto":
        if device.type != "cpu":
            return DTYPES.get(config.torch_dtype, torch.float32)
        flags = bf16_flags()
        if flags:
            log.info("compute dtype bfloat16: this CPU has %s (--dtype float32 to override)", ", ".join(flags))
            return torch.bfloat16
        log.info("compute dtype float32: this CPU has none of %s, so bf16 would be emulated "
                 "(--dtype bfloat16 to override)", ", ".join(BF16_FLAGS))
        return torch.float32
    if name not in DTYPES:
        raise CheckpointError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}")
    if device.type == "cpu" and name != "float32" and not bf16_flags():
        log.warning("computing in %s on a CPU without %s is far slower than float32; use --dtype auto",
                    name, " or ".join(BF16_FLAGS))
    return DTYPES[name]


def load_model(model_dir: str | Path, dtype: str = "auto", device: str | torch.device = "cpu") -> LoadedModel:
    """Load and validate a save_pretrained directory; CheckpointError says what is wrong."""
    start = time.perf_counter()
    path = Path(model_dir)
    if not path.is_dir():
        raise CheckpointError(f"model directory {path} does not exist; pass --model an existing directory")
    device = torch.device(device)
    config = read_config(path)
    torch_dtype = resolve_dtype(dtype, config, device)
    weights = load_weights(path, config, torch_dtype, device)
    model = CausalLM(config, weights, device)
    return LoadedModel(path=path.resolve(), config=config, model=model, model_id=model_id(path),
                       dtype=torch_dtype, device=device, load_seconds=time.perf_counter() - start)
