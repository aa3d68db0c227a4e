"""The one byte-size parser of every daemon flag (--ram, --disk-size, --kv-cache-memory, ...).

    text              bytes
    65536, 65536B     65536
    1.5KiB            1536            IEC suffixes are binary:  KiB MiB GiB TiB = 2^10 .. 2^40
    4K, 4G            4 * 2^10, 4 * 2^30   a bare letter is binary too (as in `docker --memory 4g`)
    4kB, 4KB, 4GB     4 * 10^3, 4 * 10^9   SI suffixes are decimal: kB MB GB TB = 10^3 .. 10^12

Suffixes ignore case ("4gib" is 4GiB, "4gb" is 4GB); a fraction is exact and rounds down to
whole bytes. Write GiB where binary is meant: 4GB is 4,000,000,000 bytes, 7% less than 4GiB.
"""
from __future__ import annotations

import argparse
import re
from fractions import Fraction

UNITS = {"": 1, "b": 1,
         "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
         "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


class SizeError(ValueError, argparse.ArgumentTypeError):
    """A text that is not a byte size; argparse prints its message as the flag's error."""


def parse_size(text: str) -> int:
    """'4GiB' -> 4294967296, '4GB' -> 4000000000, '65536' -> 65536 (the table above)."""
    match = SIZE.fullmatch(text)
    if match is None or match.group(2).lower() not in UNITS:
        raise SizeError(f"not a byte size: {text!r} (e.g. 4GiB = 4 x 2^30 bytes, 4GB = 4 x 10^9, "
                        "512MiB, 65536)")
    return int(Fraction(match.group(1)) * UNITS[match.group(2).lower()])
