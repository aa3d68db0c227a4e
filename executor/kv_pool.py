"""The device's paged KV pool and the page copies between it and a host buffer.

    kv_pool[num_blocks, num_layers, 2 (K|V), block_size, num_kv_heads, head_dim]
            └── one page = kv_pool[block] = one contiguous span ──────────────┘

Block-major, so a page (one block of every layer, K and V) moves between tiers in one copy.
Each layer's attention reads the strided view kv_pool[:, layer].
"""
from __future__ import annotations

import logging
import math
import mmap

import torch
from torch import Tensor

from executor.models.config import ModelConfig
from runtime.machine import meminfo_bytes

log = logging.getLogger(__name__)

# CPU default: a quarter of available RAM, at most this much (other tiers share host RAM).
CPU_DEFAULT_MAX_BYTES = 2 << 30
CPU_AVAILABLE_FRACTION = 0.25
CUDA_UTILISATION = 0.9


class KVPool:
    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device):
        if num_blocks < 1:
            raise ValueError(f"the KV pool needs at least one block, got {num_blocks}: raise --kv-cache-memory")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.num_layers, self.num_kv_heads, self.head_dim = config.num_layers, config.num_kv_heads, config.head_dim
        self.dtype, self.device = dtype, device
        self.page_shape = (config.num_layers, 2, block_size, config.num_kv_heads, config.head_dim)
        shape = (num_blocks, *self.page_shape)
        self.tensor = zeroed_host_tensor(shape, dtype) if device.type == "cpu" else \
            torch.zeros(shape, dtype=dtype, device=device)

    @property
    def page_bytes(self) -> int:
        return self.tensor[0].numel() * self.tensor.element_size()

    def layer(self, index: int) -> Tensor:
        return self.tensor[:, index]

    def copy_page_out(self, block_id: int, host_page: Tensor) -> None:
        """Copy device block -> host_page (page_bytes, any dtype/shape; viewed as bytes)."""
        _as_bytes(host_page).copy_(_as_bytes(self.tensor[block_id]))

    def copy_page_in(self, host_page: Tensor, block_id: int) -> None:
        """Copy host_page (page_bytes) -> device block."""
        _as_bytes(self.tensor[block_id]).copy_(_as_bytes(host_page))


def zeroed_host_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """A zero tensor in an anonymous mapping: the kernel hands out zero pages on first touch, so
    nothing is written up front (torch.zeros of a 2 GiB pool took 2-7 s of start-up here)."""
    num_bytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    mapping = mmap.mmap(-1, num_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        mapping.madvise(mmap.MADV_HUGEPAGE)   # fewer TLB misses in the decode attention's reads
    return torch.frombuffer(mapping, dtype=dtype).view(shape)   # the tensor keeps the mapping alive


def _as_bytes(tensor: Tensor) -> Tensor:
    assert tensor.is_contiguous(), "a page must be one contiguous span"
    return tensor.view(-1).view(torch.uint8)


def page_bytes_for(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    itemsize = torch.empty((), dtype=dtype).element_size()
    return config.num_layers * 2 * block_size * config.num_kv_heads * config.head_dim * itemsize


def default_kv_bytes(device: torch.device) -> int:
    """Bytes for the pool when neither --num-device-blocks nor --kv-cache-memory is given."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        total = torch.cuda.get_device_properties(device).total_memory
        # Keep (1 - utilisation) of the whole card for activations and the allocator.
        return max(0, int(free - (1 - CUDA_UTILISATION) * total))
    return min(CPU_DEFAULT_MAX_BYTES, int(CPU_AVAILABLE_FRACTION * _available_ram_bytes()))


def _available_ram_bytes() -> int:
    return meminfo_bytes("MemAvailable") or 4 << 30
