"""What this host has, read once from Linux's /proc (no torch): memory sizes."""
from __future__ import annotations


def meminfo_bytes(field: str) -> int | None:
    """A /proc/meminfo field in bytes ("MemTotal", "MemAvailable", ...); None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
