"""runtime.sizes: IEC suffixes (and bare letters) are binary, SI suffixes decimal."""
import argparse

import pytest

from runtime.sizes import SizeError, parse_size

SIZES = [
    ("0", 0), ("65536", 65536), ("65536B", 65536), (" 12 b ", 12),
    ("1KiB", 1024), ("1.5KiB", 1536), ("512MiB", 512 << 20), ("4GiB", 4 << 30), ("1TiB", 1 << 40),
    ("4gib", 4 << 30), ("2 GiB", 2 << 30),
    ("4K", 4 << 10), ("4M", 4 << 20), ("4G", 4 << 30), ("4T", 4 << 40), ("4g", 4 << 30),
    ("1kB", 1000), ("1KB", 1000), ("4MB", 4_000_000), ("4GB", 4_000_000_000), ("4gb", 4_000_000_000),
    ("2TB", 2_000_000_000_000), ("1.5GB", 1_500_000_000),
    ("0.3B", 0), ("1.0009KB", 1000),   # fractions round down to whole bytes
]


@pytest.mark.parametrize("text, num_bytes", SIZES)
def test_size_table(text, num_bytes):
    assert parse_size(text) == num_bytes


@pytest.mark.parametrize("text", ["lots", "", "4 GiBs", "-1", "4XB", "1e9", "GiB", "4iB", "0x10"])
def test_a_bad_size_is_a_value_error_naming_the_text(text):
    with pytest.raises(ValueError) as error:
        parse_size(text)
    assert str(error.value).startswith(f"not a byte size: {text!r} (e.g. 4GiB = 4 x 2^30 bytes, ")


def test_argparse_prints_the_size_message(capsys):
    assert issubclass(SizeError, argparse.ArgumentTypeError)
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--ram", type=parse_size)
    assert parser.parse_args(["--ram", "2GB"]).ram == 2_000_000_000
    with pytest.raises(SystemExit):
        parser.parse_args(["--ram", "lots"])
    assert "argument --ram: not a byte size: 'lots' (e.g. 4GiB" in capsys.readouterr().err
