"""The native kernels' build: its lock (a builder that died never wedges a later start) and its
name (environments that would build different binaries never share one)."""
import subprocess
import sys
import time

import pytest

from kernels import cpu_native
from kernels.cpu_native import build_lock

HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "w")
fcntl.flock(handle, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_a_torch_lock_left_by_a_dead_builder_is_removed(tmp_path):
    (tmp_path / "lock").write_text("")          # what torch's FileBaton leaves after a kill -9
    with build_lock(tmp_path, timeout_s=5):
        assert not (tmp_path / "lock").exists()


def test_a_live_builder_is_waited_for_boundedly_and_its_death_frees_the_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "strata.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="another process has been building"):
            with build_lock(tmp_path, timeout_s=1):
                pass
        assert 1 <= time.monotonic() - started < 5
        (tmp_path / "lock").write_text("")      # the holder's torch lock, as if mid-build
        holder.kill()                           # kill -9: the kernel drops its flock
        holder.wait()
        with build_lock(tmp_path, timeout_s=5):
            assert not (tmp_path / "lock").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_build_name_changes_with_torch_the_python_abi_and_the_cpu(monkeypatch):
    import sysconfig

    import torch

    base = cpu_native._build_name()
    assert base == cpu_native._build_name() and base.startswith("strata_cpu_kernels_")
    with monkeypatch.context() as patch:
        patch.setattr(torch, "__version__", "2.4.0+cu121")
        assert cpu_native._build_name() != base
    with monkeypatch.context() as patch:
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        patch.setattr(sysconfig, "get_config_var",
                      lambda name: ".cpython-312-x86_64-linux-gnu.so" if name == "EXT_SUFFIX" else suffix)
        assert cpu_native._build_name() != base
    with monkeypatch.context() as patch:
        patch.setattr(cpu_native, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
        assert cpu_native._build_name() != base


def test_a_baseline_march_names_its_build_without_the_cpu_and_checks_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(cpu_native, "cpu_flags", lambda: cpu_native.MARCH_FLAGS["x86-64-v3"])
    v3 = cpu_native._build_name("x86-64-v3")
    assert v3 != cpu_native._build_name("native") and v3 != cpu_native._build_name("x86-64-v4")
    assert cpu_native.build_flags("x86-64-v3") == ["-O3", "-march=x86-64-v3", "-fopenmp", "-ffast-math"]
    monkeypatch.setattr(cpu_native, "cpu_flags", lambda: cpu_native.MARCH_FLAGS["x86-64-v4"] | {"amx_bf16"})
    assert cpu_native._build_name("x86-64-v3") == v3   # another CPU finds the image's build
    monkeypatch.setenv("STRATA_KERNELS_MARCH", "x86-64-v3")
    assert cpu_native.target_march() == "x86-64-v3"
    monkeypatch.setattr(cpu_native, "cpu_flags", lambda: cpu_native.MARCH_FLAGS["x86-64-v2"] | {"avx", "fma"})
    with pytest.raises(RuntimeError, match="this CPU lacks abm avx2 bmi1 bmi2 f16c movbe xsave of x86-64-v3"):
        cpu_native.target_march()
    monkeypatch.setenv("STRATA_KERNELS_MARCH", "haswell")
    with pytest.raises(ValueError, match="'haswell' is not one of native, x86-64-v2, x86-64-v3, x86-64-v4"):
        cpu_native.target_march()
    monkeypatch.delenv("STRATA_KERNELS_MARCH")
    assert cpu_native.target_march() == "native"
