"""Assemble model + KV pool + runner from the daemon's settings (also used by tests and benches)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from executor.kv_pool import KVPool, default_kv_bytes, page_bytes_for
from executor.models.loader import DTYPES, LoadedModel, load_model
from executor.runner import Runner
from runtime.arenas import DEFAULT_ARENA_DIR

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RunnerSettings:
    model_dir: Path
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"          # auto: the model's compute dtype
    device: str = "cpu"
    block_size: int = 16
    num_device_blocks: int | None = None  # wins over kv_cache_bytes
    kv_cache_bytes: int | None = None     # None: sized from free memory (kv_pool.default_kv_bytes)
    max_num_batched_tokens: int | None = None   # None: DEFAULT_MAX_NUM_BATCHED_TOKENS of the device
    max_num_seqs: int = 256
    arena_dir: str = DEFAULT_ARENA_DIR    # MapArena maps only the kvstore's arenas in this directory


# The token budget per step when none is given. Every running decode waits for the step, so
# the budget bounds inter-token latency and the wait of a new request. On a CPU a step costs
# ~1-2 ms per token (2 cores, 100M model): 4096 tokens made ~5 s steps (ITL p99 5.2 s in the
# random benchmark) while 512 gives ITL p99 0.77 s at the same throughput (167.8 vs 172.7 tok/s,
# within run-to-run noise). On CUDA a 4096-token step takes tens of milliseconds.
DEFAULT_MAX_NUM_BATCHED_TOKENS = {"cpu": 512, "cuda": 4096}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


def _describe_cpu_kernels(model) -> str:
    if model.ops is None:
        return "torch forms"
    if model.onednn_packed:
        return ("native C++ (decode attention, fused norm/SiLU/RoPE, K/V write); projections: "
                "oneDNN's linear on weights reordered once")
    if model.weights.embed.dtype != torch.float32:
        return ("native C++ (decode attention, fused norm/SiLU/RoPE, K/V write); projections: "
                "oneDNN's through F.linear (this torch cannot reorder them once)")
    # A packed weight [copies, N, K] is written in about its first N x K slab; the rest of the
    # allocation stays virtual (kernels/csrc/packed_linear_cpu.cpp).
    resident = sum(packed[0].numel() * packed.element_size() for packed in model.packed.values())
    packed = (f"; projections multiply by MKL-packed copies of their weights (~{resident / (1 << 20):.0f} MiB)"
              if model.packed else "; no MKL packed sgemm in this torch, projections use F.linear")
    return "native C++ (decode attention, fused norm/SiLU/RoPE, small-batch linear)" + packed


def build_runner(settings: RunnerSettings) -> Runner:
    device = resolve_device(settings.device)
    loaded = load_model(settings.model_dir, settings.dtype, device)
    kv_dtype = resolve_kv_dtype(settings.kv_cache_dtype, loaded.dtype)
    pool = KVPool(loaded.config, _num_blocks(settings, loaded, kv_dtype), settings.block_size, kv_dtype, device)
    if device.type == "cpu":   # the model built them on load
        log.info("CPU kernels: %s", _describe_cpu_kernels(loaded.model))
    log.info("model %s (%s, %s on %s) loaded in %.2f s; KV pool %d blocks x %d tokens = %.1f MiB of %s",
             loaded.path, loaded.config.architecture, str(loaded.dtype).removeprefix("torch."), device,
             loaded.load_seconds, pool.num_blocks, pool.block_size,
             pool.num_blocks * pool.page_bytes / (1 << 20), str(kv_dtype).removeprefix("torch."))
    budget = settings.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS.get(device.type, 4096)
    runner = Runner(loaded, pool, budget, settings.max_num_seqs, settings.arena_dir)
    log.info("warm-up forward (prefill + decode) in %.2f s", runner.warm_up())
    return runner


def resolve_kv_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """The KV pool's storage dtype: auto keeps the model's compute dtype (fp32 on a CPU, so the
    tokens match a transformers run); float16/bfloat16 halve the bytes every decode step reads
    and every page move copies, at the cost of rounding K/V (attention still computes in fp32)."""
    if name == "auto":
        return model_dtype
    if name not in DTYPES:
        raise ValueError(f"--kv-cache-dtype {name!r}: choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _num_blocks(settings: RunnerSettings, loaded: LoadedModel, kv_dtype: torch.dtype) -> int:
    if settings.num_device_blocks is not None:
        return settings.num_device_blocks
    budget = settings.kv_cache_bytes
    if budget is None:
        budget = default_kv_bytes(loaded.device)
    return budget // page_bytes_for(loaded.config, settings.block_size, kv_dtype)
