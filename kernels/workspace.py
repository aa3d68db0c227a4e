"""A grow-only scratch buffer per thread for the torch twin's K/V gathers.

Why: every gather of a decode batch writes hundreds of MB (256 sequences x 512 tokens x 4 KV
heads x 64 x fp32 = 134 MB for K alone). A fresh tensor that large comes from mmap and pays a
page fault per 4 KiB on first touch. Measured here (1 thread): index_select of that K into a
fresh tensor 63 ms, into a reused buffer 21 ms. One buffer per thread keeps concurrent callers
from overwriting each other's K/V.
"""
from __future__ import annotations

import threading

import torch
from torch import Tensor

_local = threading.local()


def scratch(num_elements: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A 1-D tensor of num_elements, valid until this thread's next scratch() call of that dtype/device."""
    buffers: dict[tuple[torch.dtype, torch.device], Tensor] = getattr(_local, "buffers", None) or {}
    _local.buffers = buffers
    key = (dtype, device)
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < num_elements:
        # Grow by 1.5x so a slowly growing batch does not reallocate (and re-fault) every step.
        capacity = max(num_elements, int(1.5 * buffer.numel()) if buffer is not None else 0)
        # A normal tensor even when the caller runs in inference mode: an inference tensor could
        # not be written by a later caller outside it (the executor's forward is inference mode,
        # the kernel tests are not, and both share this thread's buffer).
        with torch.inference_mode(False):
            buffer = torch.empty(capacity, dtype=dtype, device=device)
        buffers[key] = buffer
    return buffer[:num_elements]

