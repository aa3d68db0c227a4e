"""The NVMe tier's page files: format, atomic write, verified read, index rebuild.

    <root>/pages/<key hex[:2]>/<key hex>-<page_bytes>.page
    +------------------------------+------------------------------------+
    | header, padded to 4096 bytes | page bytes, padded to 4096         |
    +------------------------------+------------------------------------+
    header: magic "STKV", version, key, page_bytes, xxh3-64 of the page, xxh3-64 of the header

A file is written under <root>/tmp and renamed into place, so a page file exists only once it
is complete. The file name carries key and size, so a rebuild lists names and never reads 100k
headers; every read verifies key, size and checksum, and a bad file is deleted and is a miss.
"""
import enum
import errno
import mmap
import os
import struct
import threading
from typing import NamedTuple

import xxhash

from kvstore.arena import ALIGN, align_up

MAGIC = b"STKV"
VERSION = 1
HEADER = struct.Struct("<4sHH32sQQ")  # magic, version, flags, key, page_bytes, page checksum
HEADER_BYTES = ALIGN


class FsyncMode(enum.Enum):
    ALWAYS = "always"  # fsync file and directory before a store counts as done
    BATCH = "batch"  # a flusher thread syncs every BATCH_INTERVAL_S
    NEVER = "never"


class CorruptPage(Exception):
    pass


class DiskPage(NamedTuple):
    key: bytes
    page_bytes: int


def file_bytes(page_bytes: int) -> int:
    return HEADER_BYTES + align_up(page_bytes)


def aligned_buffer(num_bytes: int) -> mmap.mmap:
    """Anonymous memory is page aligned, as O_DIRECT requires."""
    return mmap.mmap(-1, align_up(max(num_bytes, 1)))


def encode_header(key: bytes, page: memoryview) -> mmap.mmap:
    fields = HEADER.pack(MAGIC, VERSION, 0, key, len(page), xxhash.xxh3_64_intdigest(page))
    header = aligned_buffer(HEADER_BYTES)
    header[:HEADER.size] = fields
    header[HEADER.size:HEADER.size + 8] = xxhash.xxh3_64_digest(fields)
    return header


def check_header(header: memoryview, key: bytes, page_bytes: int) -> int:
    """The page checksum the header records; raises CorruptPage if the header is not this page's."""
    fields = bytes(header[:HEADER.size])
    if bytes(header[HEADER.size:HEADER.size + 8]) != xxhash.xxh3_64_digest(fields):
        raise CorruptPage("header checksum mismatch")
    magic, version, _, file_key, file_page_bytes, checksum = HEADER.unpack(fields)
    if magic != MAGIC or version != VERSION or file_key != key or file_page_bytes != page_bytes:
        raise CorruptPage("header does not describe this page")
    return checksum


def encode_file(key: bytes, data: bytes) -> bytes:
    """The whole image of a page file (for tools and tests that write many files fast)."""
    header = encode_header(key, memoryview(data))
    return bytes(header) + data + bytes(align_up(len(data)) - len(data))


class PageFiles:
    """Synchronous page-file I/O (the NVMe tier calls it from its I/O threads, never locked)."""

    def __init__(self, root: str, fsync: FsyncMode) -> None:
        self.root = root
        self.fsync = fsync
        self.pages_dir = os.path.join(root, "pages")
        self.tmp_dir = os.path.join(root, "tmp")
        os.makedirs(self.tmp_dir, exist_ok=True)
        for prefix in range(256):
            os.makedirs(os.path.join(self.pages_dir, f"{prefix:02x}"), exist_ok=True)
        self.is_direct = self._can_open_direct()
        self.is_dirty = False

    def path(self, key: bytes, page_bytes: int) -> str:
        name = key.hex()
        return os.path.join(self.pages_dir, name[:2], f"{name}-{page_bytes}.page")

    def _can_open_direct(self) -> bool:
        probe = os.path.join(self.tmp_dir, f"probe-{os.getpid()}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | getattr(os, "O_DIRECT", 0), 0o600)
            os.close(fd)
            return hasattr(os, "O_DIRECT")
        except OSError:  # tmpfs and some filesystems refuse O_DIRECT: buffered I/O then
            return False
        finally:
            if os.path.exists(probe):
                os.unlink(probe)

    def _flags(self) -> int:
        return os.O_DIRECT if self.is_direct else 0

    def write(self, key: bytes, slot: memoryview, page_bytes: int) -> None:
        """Write a page file atomically from `slot`: a page-aligned buffer of at least
        align_up(page_bytes) bytes (an arena slot), written as is (O_DIRECT, no copy)."""
        header = encode_header(key, slot[:page_bytes])
        tmp = os.path.join(self.tmp_dir, f"{key.hex()}-{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | self._flags(), 0o600)
        try:
            written = os.pwritev(fd, [header, slot[:align_up(page_bytes)]], 0)
            if written != file_bytes(page_bytes):
                # A regular file is written short only when the disk (or a quota) is full.
                raise OSError(errno.ENOSPC, f"short write of {tmp}: the disk is full")
            if self.fsync is FsyncMode.ALWAYS:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        final = self.path(key, page_bytes)
        os.rename(tmp, final)
        self._sync_dir(os.path.dirname(final))

    def _sync_dir(self, directory: str) -> None:
        if self.fsync is FsyncMode.ALWAYS:
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            self.is_dirty = True

    def read_into(self, key: bytes, page_bytes: int, slot: memoryview) -> None:
        """Read a page into `slot` (an aligned arena slot, len >= align_up(page_bytes)) and verify
        it. Raises FileNotFoundError if absent; CorruptPage (file deleted) if it fails a check."""
        header = aligned_buffer(HEADER_BYTES)
        body = slot[:align_up(page_bytes)]
        path = self.path(key, page_bytes)
        fd = os.open(path, os.O_RDONLY | self._flags())
        try:
            num_read = os.preadv(fd, [header, body], 0)
        finally:
            os.close(fd)
        try:
            if num_read != file_bytes(page_bytes):
                raise CorruptPage(f"{path}: {num_read} bytes, expected {file_bytes(page_bytes)}")
            checksum = check_header(memoryview(header), key, page_bytes)
            if xxhash.xxh3_64_intdigest(body[:page_bytes]) != checksum:
                raise CorruptPage(f"{path}: page checksum mismatch")
        except CorruptPage:
            self.delete(key, page_bytes)
            raise

    def read(self, key: bytes, page_bytes: int) -> bytes:
        buffer = aligned_buffer(page_bytes)
        self.read_into(key, page_bytes, memoryview(buffer))
        return buffer[:page_bytes]

    def delete(self, key: bytes, page_bytes: int) -> None:
        try:
            os.unlink(self.path(key, page_bytes))
        except FileNotFoundError:
            pass

    def flush(self) -> None:
        """Batch mode: make every rename so far durable (the flusher thread calls this)."""
        if self.is_dirty:
            self.is_dirty = False
            os.sync()

    def rebuild(self) -> list[DiskPage]:
        """Every complete page file, by name; leftovers of interrupted writes are deleted."""
        for name in os.listdir(self.tmp_dir):
            os.unlink(os.path.join(self.tmp_dir, name))
        pages = []
        for prefix in sorted(os.listdir(self.pages_dir)):
            with os.scandir(os.path.join(self.pages_dir, prefix)) as it:
                for item in it:
                    page = _parse_name(item.name)
                    if page is None:
                        os.unlink(item.path)
                    else:
                        pages.append(page)
        return pages


def _parse_name(name: str) -> DiskPage | None:
    stem, dot, ext = name.partition(".")
    key_hex, dash, size = stem.partition("-")
    if ext != "page" or not dash or len(key_hex) != 64 or not size.isdigit():
        return None
    try:
        return DiskPage(bytes.fromhex(key_hex), int(size))
    except ValueError:
        return None
