"""The NVMe tier's on-disk format: segment files of checksummed page records, and the index
file written beside a segment when it is sealed.

    <root>/segments/<seq:016x>.seg      records appended in order, every one 4096-aligned
    +---------------+----------------------+---------------+----------------------+--
    | record header | page, padded to 4096 | record header | page, padded to 4096 | ...
    +---------------+----------------------+---------------+----------------------+--
    record header (4096 bytes): magic "STKV", version 2, flags, key, page_bytes, xxh3-64 of
    the page, then xxh3-64 of those fields

    <root>/segments/<seq:016x>.idx      written (tmp + fsync + rename) when the segment is sealed
    +-------------------------------------------------+----------------------------------+
    | magic "STKI", version, num_records, xxh3 of body | body: num_records x INDEX_RECORD |
    +-------------------------------------------------+----------------------------------+
    INDEX_RECORD: key (32 B), page_bytes, offset of the record header, page xxh3-64 (u64 each)

A segment holds up to SEGMENT_BYTES of records (a bigger record gets a segment of its own).
Rebuild reads the sealed segments' index files in bulk and never reads their pages; only a
segment without an index (the open one of a crashed run) is scanned record by record, and the
first record whose header or page checksum is bad ends it. Every read verifies key, size and
checksum: a bad record is a miss, never data.
"""
import enum
import mmap
import struct
from typing import NamedTuple

import numpy as np
import xxhash

from kvstore.arena import ALIGN, align_up

MAGIC = b"STKV"
VERSION = 2
HEADER = struct.Struct("<4sHH32sQQ")  # magic, version, flags, key, page_bytes, page checksum
HEADER_BYTES = ALIGN
INDEX_MAGIC = b"STKI"
INDEX_HEADER = struct.Struct("<4sHHQQ")  # magic, version, flags, num_records, body checksum
INDEX_RECORD = np.dtype([("key", "V32"), ("page_bytes", "<u8"), ("offset", "<u8"),
                         ("checksum", "<u8")])
# 64 MiB: a crashed run's open segment is scanned in ~0.17 s at start (cold, measured here with
# 4 KiB and 256 KiB pages), and 1M 4 KiB pages make 123 index files (rebuilt in 0.8-1.0 s here,
# bench.kvstore_rebuild).
SEGMENT_BYTES = 64 << 20


class FsyncMode(enum.Enum):
    ALWAYS = "always"  # a store counts as done once its record is durable
    BATCH = "batch"  # the store's background thread syncs every 0.2 s
    NEVER = "never"


class CorruptPage(Exception):
    pass


class RecordIndex(NamedTuple):
    """The records of one segment, as columns (what an index file holds)."""
    keys: list[bytes]
    page_sizes: list[int]
    offsets: list[int]


def record_bytes(page_bytes: int) -> int:
    return HEADER_BYTES + align_up(page_bytes)


def disk_bytes(page_bytes: int) -> int:
    """What a record costs the disk: itself and its entry in the segment's index file."""
    return record_bytes(page_bytes) + INDEX_RECORD.itemsize


def aligned_buffer(num_bytes: int) -> mmap.mmap:
    """Anonymous memory is page aligned, as O_DIRECT requires."""
    return mmap.mmap(-1, align_up(max(num_bytes, 1)))


def encode_header(header: memoryview, key: bytes, page_bytes: int, checksum: int) -> None:
    """Write a record header into `header` (HEADER_BYTES, the rest left as it is)."""
    fields = HEADER.pack(MAGIC, VERSION, 0, key, page_bytes, checksum)
    header[:HEADER.size] = fields
    header[HEADER.size:HEADER.size + 8] = xxhash.xxh3_64_digest(fields)


def decode_header(header: memoryview) -> tuple[bytes, int, int]:
    """(key, page_bytes, page checksum) of a record header; raises CorruptPage."""
    fields = bytes(header[:HEADER.size])
    if bytes(header[HEADER.size:HEADER.size + 8]) != xxhash.xxh3_64_digest(fields):
        raise CorruptPage("record header checksum mismatch")
    magic, version, _, key, page_bytes, checksum = HEADER.unpack(fields)
    if magic != MAGIC or version != VERSION:
        raise CorruptPage("not a record header of this version")
    return key, page_bytes, checksum


def check_header(header: memoryview, key: bytes, page_bytes: int) -> int:
    """The page checksum the header records; raises CorruptPage if it is not this page's."""
    record_key, record_page_bytes, checksum = decode_header(header)
    if record_key != key or record_page_bytes != page_bytes:
        raise CorruptPage("record header does not describe this page")
    return checksum


def encode_record(key: bytes, data: bytes) -> bytes:
    """The whole image of a record (for tools and tests that write segments directly)."""
    header = bytearray(HEADER_BYTES)
    encode_header(memoryview(header), key, len(data), xxhash.xxh3_64_intdigest(data))
    return bytes(header) + data + bytes(align_up(len(data)) - len(data))


def encode_index(records: np.ndarray) -> bytes:
    """An index file's bytes for an INDEX_RECORD array."""
    body = records.tobytes()
    return INDEX_HEADER.pack(INDEX_MAGIC, VERSION, 0, len(records),
                             xxhash.xxh3_64_intdigest(body)) + body


def decode_index(data: bytes) -> RecordIndex:
    """The records of an index file's bytes; raises CorruptPage if it is torn or corrupt."""
    if len(data) < INDEX_HEADER.size:
        raise CorruptPage("index file too short")
    magic, version, _, num_records, checksum = INDEX_HEADER.unpack_from(data)
    body = memoryview(data)[INDEX_HEADER.size:]
    if magic != INDEX_MAGIC or version != VERSION or \
            len(body) != num_records * INDEX_RECORD.itemsize or \
            xxhash.xxh3_64_intdigest(body) != checksum:
        raise CorruptPage("index file does not match its checksum")
    records = np.frombuffer(body, INDEX_RECORD)
    keys = np.frombuffer(body, np.uint8).reshape(num_records, INDEX_RECORD.itemsize)[:, :32]
    key_bytes = np.ascontiguousarray(keys).tobytes()
    return RecordIndex([key_bytes[i:i + 32] for i in range(0, len(key_bytes), 32)],
                       records["page_bytes"].tolist(), records["offset"].tolist())
