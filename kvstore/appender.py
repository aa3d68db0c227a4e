"""The one thread that writes segment files: it appends records in the order they were queued,
as many as are waiting in one pwritev, and seals a segment when the first record of the next
one arrives.

    append() ──▶ jobs ──▶ kv-append: [header|page][header|page]... in one pwritev at the tail
                                     (+ fdatasync with --fsync always), then each future is set

Order is what makes a crash safe: records reach a segment in order, so a kill -9 leaves at most
a torn tail, which the next start cuts (SegmentFiles.scan). The thread never takes the store's
lock; the page checksums are computed by the callers, in parallel, before they queue.
"""
import logging
import os
import queue
import threading
from concurrent.futures import Future
from typing import NamedTuple

from kvstore.arena import align_up
from kvstore.disk import HEADER_BYTES, aligned_buffer, encode_header, record_bytes
from kvstore.segments import IndexRecord, SegmentFiles

log = logging.getLogger("strata.kvstore")

# One pwritev takes at most this many records (IOV_MAX is 1024 buffers) and about this many bytes.
MAX_BATCH_RECORDS = 256
MAX_BATCH_BYTES = 16 << 20


class Append(NamedTuple):
    seq: int
    key: bytes
    slot: memoryview  # aligned, len >= align_up(page_bytes): written as is (O_DIRECT, no copy)
    page_bytes: int
    checksum: int
    done: Future  # the record's offset in its segment


class Sync(NamedTuple):
    done: Future


class Delete(NamedTuple):
    seq: int


class Stop(NamedTuple):
    pass


Job = Append | Sync | Delete | Stop


class Appender:
    def __init__(self, files: SegmentFiles) -> None:
        self.files = files
        self.jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self.seq: int | None = None  # the segment open for appending, and its state
        self.fd: int | None = None
        self.tail = 0
        self.records: list[IndexRecord] = []
        self.is_dirty = False  # written since the last sync
        self.headers = aligned_buffer(HEADER_BYTES * MAX_BATCH_RECORDS)
        self.thread = threading.Thread(target=self._run, name="kv-append", daemon=True)
        self.thread.start()

    def append(self, seq: int, key: bytes, slot: memoryview, page_bytes: int,
               checksum: int) -> Future:
        """Queue a record for segment `seq` (never older than the one queued before); its future
        is the record's offset once written (durable with --fsync always), or the OSError."""
        done = Future()
        self.jobs.put(Append(seq, key, slot, page_bytes, checksum, done))
        return done

    def sync(self) -> None:
        """Wait until every record queued so far is written and durable."""
        done = Future()
        self.jobs.put(Sync(done))
        done.result()

    def delete(self, seq: int) -> None:
        """Queue the deletion of a segment, after the jobs queued before it."""
        self.jobs.put(Delete(seq))

    def close(self) -> None:
        """Write what is queued, seal the open segment, end the thread."""
        self.jobs.put(Stop())
        self.thread.join()

    def _run(self) -> None:
        held = None
        while True:
            job, held = (held if held is not None else self.jobs.get()), None
            if isinstance(job, Append):
                batch, held = self._batch(job)
                self._write(batch)
            elif isinstance(job, Sync):
                self._sync(job.done)
            elif isinstance(job, Delete):
                self._delete(job.seq)
            else:
                self._seal()
                return

    def _batch(self, first: Append) -> tuple[list[Append], Job | None]:
        """`first` and the appends queued behind it for the same segment, up to the limits, and
        the job that ended the batch (handled next), if any."""
        batch, num_bytes = [first], record_bytes(first.page_bytes)
        while len(batch) < MAX_BATCH_RECORDS and num_bytes < MAX_BATCH_BYTES:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if not isinstance(job, Append) or job.seq != first.seq:
                return batch, job
            batch.append(job)
            num_bytes += record_bytes(job.page_bytes)
        return batch, None

    def _write(self, batch: list[Append]) -> None:
        try:
            if batch[0].seq != self.seq:
                self._open(batch[0].seq)
            self.files.append(self.fd, self._buffers(batch), self.tail)
            self.is_dirty = True
        except Exception as error:  # ENOSPC above all: every caller sees it
            for job in batch:
                job.done.set_exception(error)
            return
        for job in batch:
            self.records.append((job.key, job.page_bytes, self.tail, job.checksum))
            job.done.set_result(self.tail)
            self.tail += record_bytes(job.page_bytes)

    def _buffers(self, batch: list[Append]) -> list[memoryview]:
        buffers = []
        for position, job in enumerate(batch):
            header = memoryview(self.headers)[position * HEADER_BYTES:][:HEADER_BYTES]
            encode_header(header, job.key, job.page_bytes, job.checksum)
            buffers += [header, job.slot[:align_up(job.page_bytes)]]
        return buffers

    def _open(self, seq: int) -> None:
        self._seal()
        self.fd = self.files.create(seq)
        self.seq, self.tail, self.records = seq, 0, []

    def _seal(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            self.files.seal(fd, self.seq, self.records)
        except OSError as error:
            log.warning("segment %x not sealed (%s): the next start scans it", self.seq, error)

    def _sync(self, done: Future) -> None:
        try:
            if self.fd is not None and self.is_dirty:
                self.is_dirty = False
                self.files.sync(self.fd)
        except OSError as error:
            log.warning("segment %x not synced: %s", self.seq, error)
        done.set_result(None)

    def _delete(self, seq: int) -> None:
        if seq == self.seq and self.fd is not None:
            os.close(self.fd)  # dropped while open: never sealed
            self.fd, self.seq = None, None
        self.files.delete(seq)
