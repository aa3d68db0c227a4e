"""What this CPU can do, read from /proc/cpuinfo at run time (the machines of one kind change CPU).

The compute dtype on a CPU depends on it: with AMX-BF16 or AVX512-BF16, oneDNN runs bf16 matmuls
3.6-6.8x faster than fp32 (AMX Xeon, 2 threads: 2130 vs 312 GFLOP/s at 2048^3; an EPYC with
AVX512-BF16: 397 vs 98); without them bf16 is emulated and ~300x slower than fp32 (AVX2 EPYC).
"""
from __future__ import annotations

import functools

# Any one of these makes bf16 the fast CPU dtype.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The flags of the first CPU in /proc/cpuinfo; empty where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as info:
            line = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def bf16_flags() -> list[str]:
    """The flags of BF16_FLAGS this CPU has (empty: bf16 would be emulated)."""
    flags = cpu_flags()
    return [flag for flag in BF16_FLAGS if flag in flags]
