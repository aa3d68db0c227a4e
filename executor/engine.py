"""Assemble model + KV pool + runner from the daemon's settings (also used by tests and benches)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from executor.kv_pool import KVPool, default_kv_bytes, page_bytes_for
from executor.models.loader import LoadedModel, load_model
from executor.runner import Runner

log = logging.getLogger(__name__)


@dataclass(slots=True)
class EngineSettings:
    model_dir: Path
    dtype: str = "auto"
    device: str = "cpu"
    block_size: int = 16
    num_device_blocks: int | None = None  # wins over kv_cache_bytes
    kv_cache_bytes: int | None = None     # None: sized from free memory (kv_pool.default_kv_bytes)
    max_num_batched_tokens: int = 4096
    max_num_seqs: int = 256


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


def build_runner(settings: EngineSettings) -> Runner:
    device = resolve_device(settings.device)
    loaded = load_model(settings.model_dir, settings.dtype, device)
    pool = KVPool(loaded.config, _num_blocks(settings, loaded), settings.block_size, loaded.dtype, device)
    if device.type == "cpu" and loaded.dtype == torch.float32:   # the model built them on load
        log.info("CPU kernels: %s", "native C++ (decode attention, fused norm/SiLU/RoPE)"
                 if loaded.model.ops is not None else "torch forms")
    log.info("model %s (%s, %s on %s) loaded in %.2f s; KV pool %d blocks x %d tokens = %.1f MiB",
             loaded.path, loaded.config.architecture, str(loaded.dtype).removeprefix("torch."), device,
             loaded.load_seconds, pool.num_blocks, pool.block_size,
             pool.num_blocks * pool.page_bytes / (1 << 20))
    return Runner(loaded, pool, settings.max_num_batched_tokens, settings.max_num_seqs)


def _num_blocks(settings: EngineSettings, loaded: LoadedModel) -> int:
    if settings.num_device_blocks is not None:
        return settings.num_device_blocks
    budget = settings.kv_cache_bytes
    if budget is None:
        budget = default_kv_bytes(loaded.device)
    return budget // page_bytes_for(loaded.config, settings.block_size, loaded.dtype)
