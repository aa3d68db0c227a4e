"""The native CPU kernels in C++ (csrc/), built on first use.

- paged_decode (csrc/paged_decode_cpu.cpp): decode attention is memory-bound on a CPU; the
  torch twin gathers every sequence's K/V into a padded contiguous buffer and then attends
  (three passes over the bytes). The native kernel reads K and V once, in place.
- paged_prefill (csrc/paged_prefill_cpu.cpp): a prefill chunk's causal attention over its
  paged context as two sgemm per KV head and block of queries, for short contexts, where it is
  1.3-2.4x torch's SDPA (kernels/twin.py says where it is used).
- rms_norm, add_rms_norm, silu_and_mul, rope_inplace (csrc/cpu_ops.cpp): fused elementwise
  layers of the fp32 CPU forward (executor/models/transformer.py), one pass each.
- small_linear (csrc/small_linear_cpu.cpp): x @ w.T for 2-48 rows, 2-20 beside the packed gemm
  (decode steps of a few sequences), reading each weight once at memory speed where MKL's sgemm
  does not.
- pack_linear_weight, packed_linear (csrc/packed_linear_cpu.cpp): x @ w.T for more rows with
  the weight packed once for MKL's sgemm instead of on every call.

They are compiled with torch's cpp_extension (needs a C++ compiler and ninja) once per source,
torch, Python and CPU (see _build_name), at set-up by `./dev setup` (`python -m kernels`) or else
by the first executor; when that is impossible the torch forms stay the path (a warning says
why). STRATA_NATIVE_KERNELS=0 turns them off.

They are built for this CPU (-march=native) unless STRATA_KERNELS_MARCH names a baseline of
MARCH_FLAGS: a container image builds for one so that it runs on other hosts than the builder's,
and a CPU without the baseline's flags gets the torch forms.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import sys
import sysconfig
import threading
import time
from pathlib import Path

from kernels.cpu_features import cpu_flags

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).parent / "csrc" / name
           for name in ("module.cpp", "paged_decode_cpu.cpp", "cpu_ops.cpp", "small_linear_cpu.cpp",
                        "packed_linear_cpu.cpp", "paged_prefill_cpu.cpp")]
# Included by the sources: part of the build's name, so an edit rebuilds.
HEADERS = [Path(__file__).parent / "csrc" / name for name in ("paged_decode_avx512.h", "attention_checks.h")]
# -fopenmp: ATen's parallel_for is an OpenMP region compiled into the caller; without it every
# kernel ran on one thread whatever torch's thread count (2 cores, 12/4 heads of 64: decode
# attention at 128 sequences x 400 tokens 10.8 -> 5.3 ms fp32 K/V, 6.4 -> 3.4 bf16; a 300-token
# prefill chunk 2.0 -> 1.3 ms). The libgomp it links is torch's, loaded already.
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffast-math"]
LDFLAGS = ["-fopenmp"]
# The x86-64 micro-architecture levels, by the /proc/cpuinfo flags each adds to the one before.
_V2 = frozenset({"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"})
_V3 = _V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_V4 = _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
MARCH_FLAGS = {"x86-64-v2": _V2, "x86-64-v3": _V3, "x86-64-v4": _V4}
# A first build takes 30 s to 3 min here; past this the executor starts on the torch forms.
BUILD_LOCK_TIMEOUT_S = 600.0
_module = None
_is_tried = False
_lock = threading.Lock()


def target_march() -> str:
    """STRATA_KERNELS_MARCH (native by default). ValueError naming the choices otherwise; a
    baseline this CPU lacks flags of is a RuntimeError naming them."""
    march = os.environ.get("STRATA_KERNELS_MARCH") or "native"
    if march != "native" and march not in MARCH_FLAGS:
        raise ValueError(f"STRATA_KERNELS_MARCH={march!r} is not one of native, {', '.join(MARCH_FLAGS)}")
    missing = sorted(MARCH_FLAGS.get(march, frozenset()) - cpu_flags())
    if missing:
        raise RuntimeError(f"this CPU lacks {' '.join(missing)} of {march} (STRATA_KERNELS_MARCH)")
    return march


def build_flags(march: str) -> list[str]:
    return [f"-march={march}" if flag == "-march=native" else flag for flag in CFLAGS]


def _build_name(march: str = "native") -> str:
    """Compiler flags, sources, torch's version, the Python ABI and, for -march=native, the CPU
    flags in the name: native code must not run on another CPU, a module built against another
    torch or Python must not load, and a flag change must rebuild. Environments that differ in
    any of these build side by side; ones that agree share one build."""
    import torch

    abi = [sys.implementation.cache_tag, sysconfig.get_config_var("EXT_SUFFIX") or ""]
    digest = hashlib.sha256(" ".join([*build_flags(march), torch.__version__, *abi]).encode())
    for source in SOURCES + HEADERS:
        digest.update(source.read_bytes())
    if march == "native":
        digest.update(" ".join(sorted(cpu_flags())).encode())
    return f"strata_cpu_kernels_{digest.hexdigest()[:12]}"


def _build_dir() -> Path:
    """$STRATA_EXTENSIONS_DIR, else ~/.cache/strata/torch_extensions: shared by every daemon and
    test of this user, so the build happens once per machine."""
    path = Path(os.environ.get("STRATA_EXTENSIONS_DIR")
                or Path.home() / ".cache" / "strata" / "torch_extensions")
    path.mkdir(parents=True, exist_ok=True)
    return path


def native_decode():
    """The compiled `paged_decode` function, or None when it cannot be built here."""
    module = native_ops()
    return None if module is None else module.paged_decode


def native_prefill():
    """The compiled `paged_prefill` function, or None when it cannot be built here."""
    module = native_ops()
    return None if module is None else module.paged_prefill


def native_ops():
    """The compiled module (paged_decode and the fused CPU layers), or None when it cannot be
    built here."""
    global _module, _is_tried
    if _is_tried:
        return _module
    with _lock:
        if _is_tried:
            return _module
        if os.environ.get("STRATA_NATIVE_KERNELS", "1") == "0":
            _is_tried = True
            return None
        try:
            _module = _load_or_build()
        except Exception as error:  # noqa: BLE001 - the torch forms remain a correct path
            log.warning("native CPU kernels unavailable (%s); using the torch forms", error)
            _module = None
        _is_tried = True
    return _module


def _load_or_build():
    """Import the module built for exactly these sources, flags, torch and CPU (its name says
    so) without asking ninja (about a second of start-up); build it first when it is missing."""
    import importlib.machinery
    import importlib.util

    march = target_march()
    name = _build_name(march)
    build_dir = _build_dir() / name
    built = build_dir / f"{name}.so"
    if built.is_file():
        log.info("loading the native CPU kernels %s", name)
        try:
            loader = importlib.machinery.ExtensionFileLoader(name, str(built))
            spec = importlib.util.spec_from_file_location(name, built, loader=loader)
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
            return module
        except ImportError as error:   # e.g. a build that died half-way: build again below
            log.warning("cannot import %s (%s); rebuilding it", built, error)
    build_dir.mkdir(exist_ok=True)
    with build_lock(build_dir, BUILD_LOCK_TIMEOUT_S):
        from torch.utils.cpp_extension import load

        log.info("building the native CPU kernels %s for -march=%s (about a minute, once per machine)",
                 name, march)
        return load(name=name, sources=[str(source) for source in SOURCES], build_directory=str(build_dir),
                    extra_cflags=build_flags(march), extra_ldflags=LDFLAGS, verbose=False)


@contextlib.contextmanager
def build_lock(build_dir: Path, timeout_s: float):
    """Hold an flock on build_dir/strata.lock while building: the kernel drops it when its holder
    dies, where torch's own `lock` file (a FileBaton) outlives a killed builder and makes every
    later build wait forever. So a torch `lock` found while holding the flock is a dead
    builder's and is removed. TimeoutError after timeout_s (another process still building)."""
    with open(build_dir / "strata.lock", "w") as handle:
        deadline, is_logged = time.monotonic() + timeout_s, False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not is_logged:
                    log.info("another process is building the native CPU kernels in %s; waiting for "
                             "it (at most %.0f s)", build_dir, timeout_s)
                    is_logged = True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process has been building in {build_dir} for over "
                                       f"{timeout_s:.0f} s") from None
                time.sleep(0.5)
        stale = build_dir / "lock"
        if stale.exists():
            log.warning("removing %s, left by a build that died", stale)
            stale.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main() -> int:
    """`python -m kernels`: build (or find) the native CPU kernels now; 0 either way, since the
    torch forms are a correct fallback (the warning says why there is no build)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    module = native_ops()
    print(f"native CPU kernels: {module.__file__ if module is not None else 'unavailable, torch forms'}")
    return 0
