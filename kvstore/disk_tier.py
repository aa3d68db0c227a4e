"""The NVMe tier: segment files (disk.py, segments.py) under a byte budget, reclaimed a whole
segment at a time, oldest first.

    segments:  [seq 3, sealed] [seq 4, sealed] ... [seq 9, open] ◀── appends (appender.py)
                     ▲ dropped first when a write needs room

Its state (the budget, the segments and their entries, each entry's disk location, the
counters) is guarded by the store's one lock, handed in; methods marked "lock held" may release
it around I/O. Writes go through the appender thread; reads run in the caller's thread. A
segment is dropped only when no append to it is in flight and none of its pages is pinned
without a RAM copy (a read of it may be in flight), so a file is never deleted under a read.
"""
import errno
import gc
import logging
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import xxhash

from kvstore.appender import Appender
from kvstore.arena import ALIGN
from kvstore.disk import (INDEX_RECORD, SEGMENT_BYTES, CorruptPage, RecordIndex, disk_bytes,
                          record_bytes)
from kvstore.index import Entry, Index
from kvstore.segments import SegmentFiles
from kvstore.stats import TierCounters

log = logging.getLogger("strata.kvstore")

# A segment is at most this share of the budget, so a reclaim drops at most 1/8 of the pages.
SEGMENTS_PER_BUDGET = 8


@contextmanager
def _no_collector():
    """The cyclic garbage collector off: measured here, indexing 1M pages takes 0.6 s without
    it and 1.8 s with it (it rescans the young entries again and again); entries hold no cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(slots=True)
class Segment:
    seq: int
    num_bytes: int = ALIGN  # the index file's first block, then records written or being written
    num_appends: int = 0  # in flight
    entries: list[Entry] = field(default_factory=list)  # may hold entries since forgotten

    @property
    def has_records(self) -> bool:
        """Records written or being written (`entries` only lists the written ones)."""
        return self.num_bytes > ALIGN


class PendingAppend(NamedTuple):
    entry: Entry
    segment: Segment
    num_bytes: int
    done: Future


class DiskTier:
    def __init__(self, files: SegmentFiles, capacity_bytes: int, lock: threading.Condition,
                 index: Index) -> None:
        self.files = files
        self.capacity_bytes = capacity_bytes
        self.num_bytes = 0
        self.lock = lock
        self.index = index
        self.counters = TierCounters()
        self.segments: dict[int, Segment] = {}  # oldest first; the last one is open
        self.has_shrunk = False
        self.appender = Appender(files)

    @property
    def segment_bytes(self) -> int:
        return min(SEGMENT_BYTES, self.capacity_bytes // SEGMENTS_PER_BUDGET)

    def rebuild(self) -> int:
        """Before any other call: index every segment's records; returns the pages indexed."""
        seqs = self.files.list_segments()
        with _no_collector():
            for seq in seqs:
                self._add_segment(seq, self._records(seq))
        self._open_segment(seqs[-1] + 1 if seqs else 0)  # this run appends to a new segment
        with self.lock:
            self._reserve(0)  # a smaller --disk-size than last run: drop the oldest segments
        return len(self.index)

    def _records(self, seq: int) -> RecordIndex:
        """A segment's records from its index file; an unsealed one (left by a crash) is
        scanned, its torn tail cut, and sealed."""
        try:
            return self.files.load_index(seq)
        except (FileNotFoundError, CorruptPage):
            self.files.write_index(seq, self.files.scan(seq))
            return self.files.load_index(seq)

    def _add_segment(self, seq: int, records: RecordIndex) -> None:
        segment = self._open_segment(seq)
        segment.entries = self.index.add_disk_pages(records.keys, records.page_sizes, seq,
                                                    records.offsets)
        if records.offsets:  # records are contiguous: the last one ends the segment
            num_bytes = records.offsets[-1] + record_bytes(records.page_sizes[-1]) + \
                len(records.offsets) * INDEX_RECORD.itemsize
            segment.num_bytes += num_bytes
            self.num_bytes += num_bytes

    def write(self, entry: Entry, slot: memoryview) -> bool:
        """Unlocked, entry pinned. A full disk skips the store (counted), never fails the caller."""
        return self.write_all([(entry, slot)]) == 1

    def write_all(self, pages: list[tuple[Entry, memoryview]]) -> int:
        """Unlocked, entries pinned: write several pages at once (they share pwritev calls and,
        with --fsync always, fdatasyncs); returns how many were written."""
        appends = [self._queue(entry, slot) for entry, slot in pages]
        return sum(self._finish(append) for append in appends if append is not None)

    def _queue(self, entry: Entry, slot: memoryview) -> PendingAppend | None:
        """Unlocked. Reserve room and queue the record, or count a skip and return None."""
        num_bytes = disk_bytes(entry.page_bytes)
        checksum = xxhash.xxh3_64_intdigest(slot[:entry.page_bytes])
        with self.lock:
            if not self._reserve(num_bytes):
                self.counters.num_store_skips += 1
                return None
            segment = self._segment_for(num_bytes)
            segment.num_appends += 1
            segment.num_bytes += num_bytes
            done = self.appender.append(segment.seq, entry.key, slot, entry.page_bytes, checksum)
        return PendingAppend(entry, segment, num_bytes, done)

    def _finish(self, append: PendingAppend) -> bool:
        """Unlocked. Wait for the record; then the entry's disk copy exists."""
        entry, segment = append.entry, append.segment
        try:
            offset = append.done.result()
        except OSError as error:
            self._undo_append(segment, append.num_bytes, error)
            return False
        with self.lock:
            segment.num_appends -= 1
            entry.disk_segment, entry.disk_offset = segment.seq, offset
            segment.entries.append(entry)
            self.counters.bytes_in += entry.page_bytes
        return True

    def _undo_append(self, segment: Segment, num_bytes: int, error: OSError) -> None:
        """Unlocked."""
        with self.lock:
            segment.num_appends -= 1
            segment.num_bytes -= num_bytes
            self.num_bytes -= num_bytes
            self.counters.num_store_skips += 1
            self.counters.num_io_errors += 1
            if error.errno == errno.ENOSPC:
                self._shrink_budget(segment)
                return
        log.warning("NVMe store skipped: %s", error)

    def _shrink_budget(self, segment: Segment) -> None:
        """Lock held. The disk is full below the configured size: the budget becomes what the
        tier holds now (less the index file of `segment`, the one that filled it, not written
        yet), so later stores reclaim its oldest segments instead of failing. Warns once: the
        records of one batch fail together, and each shrinks it a little more."""
        unwritten = ALIGN + len(segment.entries) * INDEX_RECORD.itemsize
        configured, self.capacity_bytes = self.capacity_bytes, self.num_bytes - unwritten
        log.log(logging.INFO if self.has_shrunk else logging.WARNING,
                "NVMe tier: the disk is full at %d bytes of pages, below its budget of %d; the "
                "budget is now %d bytes (give --disk-size at most the free space)",
                self.num_bytes, configured, self.capacity_bytes)
        self.has_shrunk = True

    def _segment_for(self, num_bytes: int) -> Segment:
        """Lock held. The open segment, a new one if the record does not fit (a record bigger
        than a segment gets one of its own)."""
        open_segment = next(reversed(self.segments.values()))
        if open_segment.has_records and open_segment.num_bytes + num_bytes > self.segment_bytes:
            open_segment = self._open_segment(open_segment.seq + 1)
        return open_segment

    def _open_segment(self, seq: int) -> Segment:
        """Lock held (or in rebuild). The segment after the last one, which it ends (the
        appender seals that on the first record of this one)."""
        segment = self.segments[seq] = Segment(seq)
        self.num_bytes += segment.num_bytes
        return segment

    def _reserve(self, num_bytes: int) -> bool:
        """Lock held. Room for one record, dropping the oldest segments as needed."""
        if num_bytes > self.capacity_bytes:
            return False
        while self.num_bytes + num_bytes > self.capacity_bytes:
            victim = self._oldest_droppable()
            if victim is None:
                return False
            self._drop(victim)
        self.num_bytes += num_bytes
        return True

    def _oldest_droppable(self) -> Segment | None:
        """Lock held. The oldest segment that can go now; the open one is ended first when it
        is the only one (a budget of less than a few segments, or a disk that filled)."""
        segments = list(self.segments.values())
        if len(segments) == 1 and segments[0].has_records:
            self._open_segment(segments[0].seq + 1)
        return next((s for s in segments if self._can_drop(s)), None)

    def _can_drop(self, segment: Segment) -> bool:
        is_open = segment is next(reversed(self.segments.values()))
        return not is_open and segment.num_appends == 0 and not any(
            entry.num_pins and entry.ram_slot is None and entry.disk_segment == segment.seq
            for entry in segment.entries)

    def _drop(self, segment: Segment) -> None:
        """Lock held. Its pages leave the index (those also in RAM stay there); the appender
        deletes the files."""
        del self.segments[segment.seq]
        self.num_bytes -= segment.num_bytes
        for entry in segment.entries:
            if entry.disk_segment == segment.seq:
                self._forget(entry)
                self.counters.num_evictions += 1
        self.appender.delete(segment.seq)

    def _forget(self, entry: Entry) -> None:
        """Lock held. The disk copy is gone: so is the entry unless RAM holds it or it is pinned
        (a pinned one's reader finds no copy and forgets it then)."""
        entry.disk_segment = None
        if entry.ram_slot is None and entry.num_pins == 0:
            self.index.remove(entry)

    def read_into(self, entry: Entry, view: memoryview) -> Exception | None:
        """Lock held, entry pinned; released around the read. Read the page into `view` (an
        arena slot) and verify it: None, or the error (corrupt, reclaimed) that makes it a miss."""
        seq, offset = entry.disk_segment, entry.disk_offset
        if seq is None:
            return FileNotFoundError("the page's segment was reclaimed")
        self.lock.release()
        try:
            self.files.read_into(seq, offset, entry.key, entry.page_bytes, view)
            return None
        except (CorruptPage, FileNotFoundError) as error:
            return error
        finally:
            self.lock.acquire()

    def read(self, entry: Entry) -> bytes:
        """Unlocked, entry pinned: the page's bytes, verified. Raises CorruptPage or
        FileNotFoundError; the caller then calls forget_bad_copy."""
        with self.lock:
            seq, offset = entry.disk_segment, entry.disk_offset
        if seq is None:
            raise FileNotFoundError("the page's segment was reclaimed")
        return self.files.read(seq, offset, entry.key, entry.page_bytes)

    def forget_bad_copy(self, entry: Entry, error: Exception) -> None:
        """Lock held. A corrupt or vanished record is a miss, never data; a corrupt record's
        bytes stay counted until its segment is reclaimed."""
        if isinstance(error, CorruptPage):
            log.warning("corrupt page %s forgotten: %s", entry.key.hex()[:16], error)
            self.counters.num_corrupt += 1
        else:   # the segment vanished under the index, or was reclaimed while pinned
            self.counters.num_io_errors += 1
        self._forget(entry)

    def flush(self) -> None:
        """Make every record written so far durable (fsync=batch)."""
        self.appender.sync()

    def close(self) -> None:
        """After the last write: write what is queued and seal the open segment."""
        self.appender.close()
