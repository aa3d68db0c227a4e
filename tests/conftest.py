"""Test-wide settings. Set before any test module imports torch or triton."""
import os

# OpenMP's busy-wait default makes torch 5-70x slower on a 2-core machine shared
# with other processes; one passive thread per process is the measured best here.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Triton kernels run on the CPU through the interpreter (there is no GPU here).
os.environ.setdefault("TRITON_INTERPRET", "1")
