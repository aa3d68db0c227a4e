"""The NVMe tier: page files (disk.py) under a byte budget, dropping its LRU pages when full.

Its state (the budget, each entry's `is_on_disk`, the counters) is guarded by the store's one
lock, handed in; methods marked "lock held" may release it around I/O. The file I/O runs on
`self.io`, a pool of pread/pwrite workers that never takes the lock.
"""
import errno
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from kvstore.disk import CorruptPage, PageFiles, file_bytes
from kvstore.index import Entry, EntryState, Index
from kvstore.policy import EvictionPolicy
from kvstore.stats import TierCounters

log = logging.getLogger("strata.kvstore")


class DiskTier:
    def __init__(self, files: PageFiles, capacity_bytes: int, lock: threading.Condition,
                 index: Index, policy: EvictionPolicy) -> None:
        self.files = files
        self.capacity_bytes = capacity_bytes
        self.num_bytes = 0
        self.lock = lock
        self.index = index
        self.policy = policy
        self.counters = TierCounters()
        self.io = ThreadPoolExecutor(4, thread_name_prefix="kv-io")

    def rebuild(self) -> int:
        """Before any other call: index every page file; returns the pages the index holds."""
        for page in self.files.rebuild():
            self.index.add(Entry(page.key, page.page_bytes, EntryState.READY, is_on_disk=True))
            self.num_bytes += file_bytes(page.page_bytes)
        with self.lock:
            self._reserve(0)  # a smaller --disk-size than last run: drop LRU files
        return len(self.index)

    def write(self, entry: Entry, slot: memoryview) -> bool:
        """Unlocked, entry pinned. A full disk skips the store (counted), never fails the caller."""
        num_bytes = file_bytes(entry.page_bytes)
        with self.lock:
            if not self._reserve(num_bytes):
                self.counters.num_store_skips += 1
                return False
        try:
            self.io.submit(self.files.write, entry.key, slot, entry.page_bytes).result()
        except OSError as error:
            with self.lock:
                self.num_bytes -= num_bytes
                self.counters.num_store_skips += 1
                self.counters.num_io_errors += 1
                if error.errno == errno.ENOSPC:
                    self._shrink_budget()
                    return False
            log.warning("NVMe store skipped: %s", error)
            return False
        with self.lock:
            entry.is_on_disk = True
            self.counters.bytes_in += entry.page_bytes
        return True

    def _shrink_budget(self) -> None:
        """Lock held. The disk is full below the configured size: the budget becomes what the
        tier holds now, so later stores evict its LRU pages instead of failing one by one."""
        configured, self.capacity_bytes = self.capacity_bytes, self.num_bytes
        log.warning("NVMe tier: the disk is full at %d bytes of pages, below its budget of %d; the "
                    "budget is now %d bytes (give --disk-size at most the free space)",
                    self.num_bytes, configured, self.capacity_bytes)

    def _reserve(self, num_bytes: int) -> bool:
        """Lock held; may release it. Room for one file, dropping LRU disk pages as needed."""
        if num_bytes > self.capacity_bytes:
            return False
        while self.num_bytes + num_bytes > self.capacity_bytes:
            victim = self.index.victim(lambda entry: entry.can_leave_disk, self.policy.priority)
            if victim is None:
                return False
            self._drop(victim)
            self.counters.num_evictions += 1
            self._unlocked_io(self.files.delete, victim.key, victim.page_bytes)
        self.num_bytes += num_bytes
        return True

    def _drop(self, entry: Entry) -> None:
        """Lock held. Forget the disk copy (the caller deletes the file, or it is gone)."""
        entry.is_on_disk = False
        self.num_bytes -= file_bytes(entry.page_bytes)
        if entry.ram_slot is None and entry.num_pins == 0:
            self.index.remove(entry)

    def _unlocked_io(self, function, *args):
        """Lock held: run file I/O on the I/O pool with the lock released."""
        self.lock.release()
        try:
            return self.io.submit(function, *args).result()
        finally:
            self.lock.acquire()

    def read_into(self, entry: Entry, view: memoryview) -> Exception | None:
        """Lock held; released around the read. Read the page into `view` (an arena slot) and
        verify it: None, or the error (corrupt or vanished file) that makes it a miss."""
        return self._unlocked_io(self._read_into, entry, view)

    def _read_into(self, entry: Entry, view: memoryview) -> Exception | None:
        try:
            self.files.read_into(entry.key, entry.page_bytes, view)
            return None
        except (CorruptPage, FileNotFoundError) as error:
            return error

    def read(self, entry: Entry) -> bytes:
        """Unlocked, entry pinned: the page's bytes, verified. Raises CorruptPage (the file is
        deleted) or FileNotFoundError; the caller then calls forget_bad_copy."""
        return self.io.submit(self.files.read, entry.key, entry.page_bytes).result()

    def forget_bad_copy(self, entry: Entry, error: Exception) -> None:
        """Lock held. A corrupt or vanished page file is a miss, never data."""
        if isinstance(error, CorruptPage):
            log.warning("corrupt page %s deleted: %s", entry.key.hex()[:16], error)
            self.counters.num_corrupt += 1
        else:   # the file vanished under the index
            self.counters.num_io_errors += 1
        if entry.is_on_disk:
            self._drop(entry)

    def flush(self) -> None:
        """Make every page file written so far durable (fsync=batch)."""
        self.files.flush()

    def close(self) -> None:
        """After the last write: wait for the I/O in flight, then flush."""
        self.io.shutdown(wait=True)
        self.files.flush()
