"""Synchronous segment-file I/O (format in disk.py): create, append, seal, verified read, scan.

No lock and no state beyond the directory, the O_DIRECT probe and a header buffer per reading
thread: the appender thread (appender.py) writes, the store's threads read, and the NVMe tier
(disk_tier.py) decides which segment a record goes to and when one is deleted.
"""
import errno
import logging
import mmap
import os
import shutil
import threading

import numpy as np
import xxhash

from kvstore.arena import align_up
from kvstore.disk import (HEADER_BYTES, INDEX_RECORD, CorruptPage, FsyncMode, RecordIndex,
                          aligned_buffer, check_header, decode_header, decode_index, encode_index,
                          record_bytes)

log = logging.getLogger("strata.kvstore")

IndexRecord = tuple[bytes, int, int, int]  # key, page_bytes, offset, page checksum


class SegmentFiles:
    def __init__(self, root: str, fsync: FsyncMode) -> None:
        self.fsync = fsync
        self.dir = os.path.join(root, "segments")
        os.makedirs(self.dir, exist_ok=True)
        _remove_page_files(root)
        self.is_direct = self._can_open_direct()
        self.per_thread = threading.local()  # .header: an aligned buffer for record headers

    def path(self, seq: int, ext: str = "seg") -> str:
        return os.path.join(self.dir, f"{seq:016x}.{ext}")

    def _can_open_direct(self) -> bool:
        probe = self.path(os.getpid(), "probe")
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

    # Writing (the appender thread) ----------------------------------------------------------

    def create(self, seq: int) -> int:
        """A new, empty segment open for appending."""
        fd = os.open(self.path(seq), os.O_WRONLY | os.O_CREAT | os.O_EXCL | self._flags(), 0o600)
        self._sync_dir()
        return fd

    def append(self, fd: int, buffers: list, offset: int) -> None:
        """Write aligned `buffers` at `offset`; a short write is cut back and raises ENOSPC."""
        num_bytes = sum(len(buffer) for buffer in buffers)
        try:
            written = os.pwritev(fd, buffers, offset)
        except OSError:
            os.ftruncate(fd, offset)
            raise
        if written != num_bytes:
            # A regular file is written short only when the disk (or a quota) is full.
            os.ftruncate(fd, offset)
            raise OSError(errno.ENOSPC, "short write of a segment: the disk is full")
        if self.fsync is FsyncMode.ALWAYS:
            os.fdatasync(fd)

    def seal(self, fd: int, seq: int, records: list[IndexRecord]) -> None:
        """Make the segment durable, write its index file, and close it."""
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self.write_index(seq, records)

    def write_index(self, seq: int, records: list[IndexRecord]) -> None:
        data = encode_index(np.array(records, INDEX_RECORD))
        tmp = self.path(seq, "idx.tmp")
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.rename(tmp, self.path(seq, "idx"))
        self._sync_dir()

    def _sync_dir(self) -> None:
        if self.fsync is FsyncMode.ALWAYS:
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def sync(self, fd: int) -> None:
        os.fdatasync(fd)

    def delete(self, seq: int) -> None:
        for ext in ("seg", "idx"):
            try:
                os.unlink(self.path(seq, ext))
            except FileNotFoundError:
                pass

    # Reading (any thread) -------------------------------------------------------------------

    def read_into(self, seq: int, offset: int, key: bytes, page_bytes: int,
                  slot: memoryview) -> None:
        """Read the record at `offset` into `slot` (aligned, len >= align_up(page_bytes)) and
        verify it. Raises FileNotFoundError if the segment is gone; CorruptPage if a check fails."""
        header = self._header_buffer()
        body = slot[:align_up(page_bytes)]
        fd = os.open(self.path(seq), os.O_RDONLY | self._flags())
        try:
            num_read = os.preadv(fd, [header, body], offset)
        finally:
            os.close(fd)
        if num_read != record_bytes(page_bytes):
            raise CorruptPage(f"segment {seq:x} record at {offset}: {num_read} bytes, expected "
                              f"{record_bytes(page_bytes)}")
        checksum = check_header(memoryview(header), key, page_bytes)
        if xxhash.xxh3_64_intdigest(body[:page_bytes]) != checksum:
            raise CorruptPage(f"segment {seq:x} record at {offset}: page checksum mismatch")

    def _header_buffer(self) -> mmap.mmap:
        """This thread's header buffer: reused, since a fresh mmap costs ~10 us a read."""
        if not hasattr(self.per_thread, "header"):
            self.per_thread.header = aligned_buffer(HEADER_BYTES)
        return self.per_thread.header

    def read(self, seq: int, offset: int, key: bytes, page_bytes: int) -> bytes:
        buffer = aligned_buffer(page_bytes)
        self.read_into(seq, offset, key, page_bytes, memoryview(buffer))
        return buffer[:page_bytes]

    # Rebuild --------------------------------------------------------------------------------

    def list_segments(self) -> list[int]:
        """Sequence numbers of the segment files, oldest first; leftovers are removed (index
        files whose segment is gone, unfinished index files)."""
        names = os.listdir(self.dir)
        seqs = sorted(int(name[:16], 16) for name in names if _is_segment_name(name))
        for name in set(names) - {f"{seq:016x}.{ext}" for seq in seqs for ext in ("seg", "idx")}:
            os.unlink(os.path.join(self.dir, name))
        return seqs

    def load_index(self, seq: int) -> RecordIndex:
        """A sealed segment's records. Raises FileNotFoundError (never sealed) or CorruptPage."""
        with open(self.path(seq, "idx"), "rb") as file:
            return decode_index(file.read())

    def scan(self, seq: int) -> list[IndexRecord]:
        """The complete records of an unsealed segment, read one by one; the first torn or bad
        record ends the segment, which is truncated there."""
        records, offset = [], 0
        with open(self.path(seq), "r+b") as file:
            size = os.fstat(file.fileno()).st_size
            while offset + HEADER_BYTES <= size:
                record = _read_record(file, offset)
                if record is None:
                    break
                records.append(record)
                offset += record_bytes(record[1])
            if offset < size:
                log.warning("segment %x: torn tail cut at %d of %d bytes", seq, offset, size)
                file.truncate(offset)
        return records


def _is_segment_name(name: str) -> bool:
    stem, dot, ext = name.partition(".")
    return ext == "seg" and len(stem) == 16 and all(c in "0123456789abcdef" for c in stem)


def _read_record(file, offset: int) -> IndexRecord | None:
    """The record at `offset` if its header and page check out, else None."""
    header = os.pread(file.fileno(), HEADER_BYTES, offset)
    try:
        key, page_bytes, checksum = decode_header(memoryview(header))
    except CorruptPage:
        return None
    page = os.pread(file.fileno(), page_bytes, offset + HEADER_BYTES)
    if len(page) != page_bytes or xxhash.xxh3_64_intdigest(page) != checksum:
        return None
    return key, page_bytes, offset, checksum


def _remove_page_files(root: str) -> None:
    """The one-file-per-page format of earlier versions is not imported: it is removed."""
    old = [path for path in (os.path.join(root, "pages"), os.path.join(root, "tmp"))
           if os.path.isdir(path)]
    if old:
        log.warning("removing %s: page files of an earlier kvstore format (not imported)",
                    " and ".join(old))
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
