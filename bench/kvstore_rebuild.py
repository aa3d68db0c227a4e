"""Time a warm restart's NVMe index rebuild through the real Store (DiskTier.rebuild).

    python -m bench.kvstore_rebuild [--pages 1000000] [--page-bytes 4096] [--disk-dir DIR]

`write_segments` builds the segment files fast in the tier's real format (sealed segments with
their index files); page data is sparse except for the records it is given bytes for, since a
rebuild reads index files only, never pages.
"""
import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import xxhash

from bench.kvstore_pages import key_of, page_of
from kvstore.arena import ALIGN
from kvstore.disk import (INDEX_RECORD, SEGMENT_BYTES, FsyncMode, disk_bytes, encode_index,
                          encode_record, record_bytes)
from kvstore.segments import SegmentFiles
from kvstore.store import Store, StoreConfig


def write_segments(root: str, keys: list[bytes], page_bytes: int,
                   pages: dict[int, bytes]) -> None:
    """Sealed segments holding `keys` in order, as full as the tier fills them; `pages` maps a
    key's position to the bytes its record holds (the others' data is a hole)."""
    files = SegmentFiles(root, FsyncMode.NEVER)
    per_segment = (SEGMENT_BYTES - ALIGN) // disk_bytes(page_bytes)
    for seq, start in enumerate(range(0, len(keys), per_segment)):
        chunk = keys[start:start + per_segment]
        records = np.zeros(len(chunk), INDEX_RECORD)
        records["key"] = np.frombuffer(b"".join(chunk), "V32")
        records["page_bytes"] = page_bytes
        records["offset"] = np.arange(len(chunk), dtype=np.uint64) * record_bytes(page_bytes)
        with open(files.path(seq), "wb") as file:
            file.truncate(len(chunk) * record_bytes(page_bytes))
            for position in sorted(p for p in pages if start <= p < start + len(chunk)):
                data = pages[position]
                records["checksum"][position - start] = xxhash.xxh3_64_intdigest(data)
                file.seek((position - start) * record_bytes(page_bytes))
                file.write(encode_record(keys[position], data))
        with open(files.path(seq, "idx"), "wb") as file:
            file.write(encode_index(records))


def bench(num_pages: int, page_bytes: int, disk_dir: str, shm_dir: str) -> None:
    start = time.perf_counter()
    keys = [key_of(f"rebuild-{i}") for i in range(num_pages)]
    real = {0: page_of(keys[0], page_bytes), num_pages - 1: page_of(keys[-1], page_bytes)}
    write_segments(disk_dir, keys, page_bytes, real)
    print(f"wrote {num_pages} records ({page_bytes} B pages, sparse) in "
          f"{time.perf_counter() - start:.1f} s")
    config = StoreConfig(ram_bytes=64 << 20, shm_dir=shm_dir, disk_dir=disk_dir,
                         disk_bytes=num_pages * disk_bytes(page_bytes) * 2, fsync=FsyncMode.NEVER)
    start = time.perf_counter()
    store = Store(config)
    start_s = time.perf_counter() - start
    try:
        print(f"index rebuilt: {store.num_rebuilt} pages in {store.rebuild_s:.3f} s "
              f"(Store() {start_s:.3f} s)")
        store.register("bench", page_bytes)
        sample = keys[::max(num_pages // 10, 1)]
        assert len(store.lookup("bench", sample)) == len(sample), "rebuilt keys not found"
        plan = store.prepare_load("bench", [keys[0], keys[-1]])
        arena = store.ram.arenas[page_bytes]
        got = [bytes(arena.page(slot, page_bytes)) for slot in plan.slots]
        assert got == [real[0], real[num_pages - 1]], "rebuilt pages do not load"
        store.complete_load(plan.lease_id)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=1_000_000)
    parser.add_argument("--page-bytes", type=int, default=4096)
    parser.add_argument("--disk-dir", default=None, help="on the NVMe disk (default: a temp dir)")
    args = parser.parse_args()
    shm_dir = tempfile.mkdtemp(prefix="strata-bench-", dir="/dev/shm")
    disk_dir = tempfile.mkdtemp(prefix="strata-bench-rebuild-", dir=args.disk_dir)
    try:
        bench(args.pages, args.page_bytes, disk_dir, shm_dir)
    finally:
        shutil.rmtree(shm_dir, ignore_errors=True)
        shutil.rmtree(disk_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
