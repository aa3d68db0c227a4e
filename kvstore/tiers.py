"""The mechanism under the store: slots, eviction, demotion and promotion between tiers.

    PrepareStore ──▶ RAM slot ──evict──▶ NVMe file ──evict──▶ gone
                        │  (write-back; write-through copies at CompleteStore)
                        └──────evict (no NVMe tier)─────────▶ backing kvstore
    PrepareLoad  ◀── RAM slot ◀─promote── NVMe file | backing kvstore

Locking: one lock (`self.lock`, a Condition) guards the index, the slot lists and the counters.
Methods marked "lock held" are called with it and may release it around I/O (so the caller
re-checks what it read before); methods marked "unlocked" are called without it. Disk I/O runs
on `self.io`, a thread pool of pread/pwrite workers that never takes the lock.
"""
import enum
import errno
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from kvstore.disk import CorruptPage, PageFiles, file_bytes
from kvstore.errors import NoRoom
from kvstore.index import Entry, EntryState, Index
from kvstore.policy import EvictionPolicy
from kvstore.ram import RamTier
from runtime.kvstore_client import KVStoreClient

log = logging.getLogger("strata.kvstore")


class Tier(enum.IntEnum):
    """Same numbers as strata.v1.Tier."""
    RAM = 1
    DISK = 2
    REMOTE = 3


@dataclass(slots=True)
class TierCounters:
    num_hits: int = 0
    num_misses: int = 0
    num_evictions: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    num_store_skips: int = 0
    num_corrupt: int = 0


class Tiers:
    def __init__(self, ram: RamTier, disk: PageFiles | None, disk_capacity_bytes: int,
                 backing: KVStoreClient | None, policy: EvictionPolicy) -> None:
        self.lock = threading.Condition(threading.Lock())
        self.index = Index()
        self.ram = ram
        self.disk = disk
        self.disk_capacity_bytes = disk_capacity_bytes
        self.num_disk_bytes = 0
        self.backing = backing
        self.policy = policy
        self.counters = {tier: TierCounters() for tier in Tier}
        self.io = ThreadPoolExecutor(4, thread_name_prefix="kv-io")

    def _unlocked_io(self, function, *args):
        """Lock held: run disk I/O on the I/O pool with the lock released."""
        self.lock.release()
        try:
            return self.io.submit(function, *args).result()
        finally:
            self.lock.acquire()

    def _wait_promoted(self, key: bytes) -> Entry | None:
        """Lock held: the entry of `key` once no promotion of it is in flight."""
        entry = self.index.get(key)
        while entry is not None and entry.is_promoting:
            self.lock.wait()
            entry = self.index.get(key)
        return entry

    # RAM slots -----------------------------------------------------------------------------

    def _reserve_slot(self, page_bytes: int) -> int:
        """Lock held; may release it. A free RAM slot, evicting LRU pages as needed."""
        while not self.ram.can_allocate(page_bytes):
            victim = self.index.victim(lambda entry: entry.can_leave_ram, self.policy.priority)
            if victim is None:
                raise NoRoom(f"RAM tier full ({self.ram.capacity_bytes} bytes): every page is "
                             "pinned by a lease or being written; complete leases and retry")
            self._evict_from_ram(victim, page_bytes)
        return self.ram.allocate(page_bytes)

    def _needs_demotion(self, entry: Entry) -> bool:
        if self.disk is not None:
            return not entry.is_on_disk
        return self.backing is not None and not entry.is_in_backing

    def _evict_from_ram(self, victim: Entry, for_page_bytes: int) -> None:
        """Lock held; may release it. Demote (write-back) then free the victim's slot."""
        if self._needs_demotion(victim):
            victim.num_pins += 1
            self.lock.release()
            try:
                self._demote(victim)
            finally:
                self.lock.acquire()
                victim.num_pins -= 1
            if not victim.can_leave_ram:  # pinned by a load meanwhile: the caller picks again
                return
        slot, victim.ram_slot = victim.ram_slot, None
        if victim.page_bytes == for_page_bytes:
            self.ram.free(victim.page_bytes, slot)
        else:
            self.ram.free_and_release(victim.page_bytes, slot)
        self.counters[Tier.RAM].num_evictions += 1
        if not victim.is_on_disk:
            self.index.remove(victim)
        self.lock.notify_all()

    def _demote(self, entry: Entry) -> bool:
        """Unlocked, entry pinned in RAM: copy it to the next tier down."""
        slot = self.ram.arenas[entry.page_bytes].slot(entry.ram_slot)
        if self.disk is not None:
            return self._write_disk(entry, slot)
        return self._write_backing(entry, slot)

    def _copy_down(self, entry: Entry) -> None:
        """Unlocked, entry pinned in RAM: write-through to every lower tier, then unpin."""
        slot = self.ram.arenas[entry.page_bytes].slot(entry.ram_slot)
        if self.disk is not None and not entry.is_on_disk:
            self._write_disk(entry, slot)
        if self.backing is not None and not entry.is_in_backing:
            self._write_backing(entry, slot)
        with self.lock:
            entry.num_pins -= 1
            self.lock.notify_all()

    # NVMe ----------------------------------------------------------------------------------

    def _write_disk(self, entry: Entry, slot: memoryview) -> bool:
        """Unlocked, entry pinned. A full disk skips the store (counted), never fails the caller."""
        num_bytes = file_bytes(entry.page_bytes)
        with self.lock:
            if not self._reserve_disk(num_bytes):
                self.counters[Tier.DISK].num_store_skips += 1
                return False
        try:
            self.io.submit(self.disk.write, entry.key, slot, entry.page_bytes).result()
        except OSError as error:
            with self.lock:
                self.num_disk_bytes -= num_bytes
                self.counters[Tier.DISK].num_store_skips += 1
                if error.errno == errno.ENOSPC:
                    self._shrink_disk_budget()
                    return False
            log.warning("NVMe store skipped: %s", error)
            return False
        with self.lock:
            entry.is_on_disk = True
            self.counters[Tier.DISK].bytes_in += entry.page_bytes
        return True

    def _shrink_disk_budget(self) -> None:
        """Lock held. The disk is full below the configured size: the budget becomes what the
        tier holds now, so later stores evict its LRU pages instead of failing one by one."""
        configured, self.disk_capacity_bytes = self.disk_capacity_bytes, self.num_disk_bytes
        log.warning("NVMe tier: the disk is full at %d bytes of pages, below its budget of %d; the "
                    "budget is now %d bytes (give --disk-size at most the free space)",
                    self.num_disk_bytes, configured, self.disk_capacity_bytes)

    def _reserve_disk(self, num_bytes: int) -> bool:
        """Lock held; may release it. Room for one file, dropping LRU disk pages as needed."""
        if num_bytes > self.disk_capacity_bytes:
            return False
        while self.num_disk_bytes + num_bytes > self.disk_capacity_bytes:
            victim = self.index.victim(lambda entry: entry.can_leave_disk, self.policy.priority)
            if victim is None:
                return False
            self._drop_from_disk(victim)
            self.counters[Tier.DISK].num_evictions += 1
            self._unlocked_io(self.disk.delete, victim.key, victim.page_bytes)
        self.num_disk_bytes += num_bytes
        return True

    def _drop_from_disk(self, entry: Entry) -> None:
        """Lock held. Forget the disk copy (the caller deletes the file, or it is gone)."""
        entry.is_on_disk = False
        self.num_disk_bytes -= file_bytes(entry.page_bytes)
        if entry.ram_slot is None and entry.num_pins == 0:
            self.index.remove(entry)

    def _promote_from_disk(self, entry: Entry) -> bool:
        """Lock held; may release it. Read a disk-only page into a RAM slot (checksum verified)."""
        entry.is_promoting = True
        entry.num_pins += 1
        try:
            slot = self._reserve_slot(entry.page_bytes)
            view = self.ram.arenas[entry.page_bytes].slot(slot)
            error = self._unlocked_io(self._read_into, entry, view)
        except NoRoom:
            slot, error = None, NoRoom("")
        entry.is_promoting = False
        entry.num_pins -= 1
        self.lock.notify_all()
        if error is None:
            entry.ram_slot = slot
            self.counters[Tier.DISK].num_hits += 1
            self.counters[Tier.DISK].bytes_out += entry.page_bytes
            return True
        if slot is not None:
            self.ram.free(entry.page_bytes, slot)
            self._forget_bad_disk_copy(entry, error)
        return False

    def _read_into(self, entry: Entry, view: memoryview) -> Exception | None:
        try:
            self.disk.read_into(entry.key, entry.page_bytes, view)
            return None
        except (CorruptPage, FileNotFoundError) as error:
            return error

    def _forget_bad_disk_copy(self, entry: Entry, error: Exception) -> None:
        """Lock held. A corrupt or vanished page file is a miss, never data."""
        if isinstance(error, CorruptPage):
            log.warning("corrupt page %s deleted: %s", entry.key.hex()[:16], error)
            self.counters[Tier.DISK].num_corrupt += 1
        if entry.is_on_disk:
            self._drop_from_disk(entry)

    # Backing kvstore -----------------------------------------------------------------------

    def _write_backing(self, entry: Entry, slot: memoryview) -> bool:
        """Unlocked, entry pinned. A backing that is down skips the store (counted)."""
        data = bytes(slot[:entry.page_bytes])
        try:
            self.backing.put_pages([(entry.key, data)])
        except grpc.RpcError as error:
            log.warning("backing store skipped: %s", error.code())
            with self.lock:
                self.counters[Tier.REMOTE].num_store_skips += 1
            return False
        with self.lock:
            entry.is_in_backing = True
            self.counters[Tier.REMOTE].bytes_in += len(data)
        return True

    def _fetch_backing(self, keys: list[bytes]) -> dict[bytes, bytes]:
        """Unlocked. Pages the backing holds among `keys` ({} when it is down)."""
        try:
            return dict(self.backing.get_pages(keys))
        except grpc.RpcError as error:
            log.warning("backing fetch failed: %s", error.code())
            return {}

    def _lookup_backing(self, keys: list[bytes]) -> int:
        """Unlocked. How many leading keys the backing holds (0 when it is down)."""
        try:
            return self.backing.lookup("", keys).num_present
        except grpc.RpcError as error:
            log.warning("backing lookup failed: %s", error.code())
            return 0

    def _insert_page(self, key: bytes, data: bytes) -> Entry | None:
        """Lock held; may release it. A READY RAM entry holding `data` (an existing visible entry
        wins); None if the key is being written. Raises NoRoom."""
        entry = self._wait_promoted(key)
        if entry is None:
            slot = self._reserve_slot(len(data))
            entry = self.index.get(key)
            if entry is not None:  # raced while the lock was released
                self.ram.free(len(data), slot)
            else:
                self.ram.arenas[len(data)].page(slot, len(data))[:] = data
                entry = self.index.add(Entry(key, len(data), EntryState.READY, ram_slot=slot))
                self.counters[Tier.RAM].bytes_in += len(data)
        return entry if entry.is_visible else None
