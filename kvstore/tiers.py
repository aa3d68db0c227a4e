"""The mechanism under the store: RAM slots, eviction, demotion and promotion between tiers.

    PrepareStore ──▶ RAM slot ──evict──▶ NVMe record ──segment reclaimed──▶ gone
                        │  (write-back; write-through copies at CompleteStore)
                        └──────evict (no NVMe tier)─────────▶ backing (kvstore, Redis)
    PrepareLoad  ◀── RAM slot ◀─promote── NVMe record | backing

Locking: one lock (a Condition the store creates and hands to every part) guards the index,
the slot lists and the counters. Methods marked "lock held" are called with it and may release
it around I/O (so the caller re-checks what it read before); methods marked "unlocked" are
called without it.
"""
import threading

from kvstore.backing import Backing
from kvstore.disk import CorruptPage
from kvstore.disk_tier import DiskTier
from kvstore.errors import NoRoom
from kvstore.index import Entry, EntryState, Index
from kvstore.policy import EvictionPolicy
from kvstore.ram import RamTier
from kvstore.stats import Tier, TierCounters, TierSnapshot


class Tiers:
    """The RAM tier over the optional NVMe tier and backing: where each page lives and how it
    moves. The store decides which pages a lease holds; this decides where their bytes are."""

    def __init__(self, lock: threading.Condition, index: Index, ram: RamTier,
                 disk: DiskTier | None, backing: Backing | None,
                 policy: EvictionPolicy) -> None:
        self.lock = lock
        self.index = index
        self.ram = ram
        self.disk = disk
        self.backing = backing
        self.policy = policy
        self.ram_counters = TierCounters()

    def wait_promoted(self, key: bytes) -> Entry | None:
        """Lock held: the entry of `key` once no promotion of it is in flight."""
        entry = self.index.get(key)
        while entry is not None and entry.is_promoting:
            self.lock.wait()
            entry = self.index.get(key)
        return entry

    # Pages written through the arena ------------------------------------------------------

    def prepare_page(self, key: bytes, page_bytes: int) -> Entry | None:
        """Lock held; may release it. A new WRITING entry in a free RAM slot, pinned once, or
        None if `key` is present or in flight. Raises NoRoom."""
        if self.index.get(key) is not None:
            return None
        slot = self._reserve_slot(page_bytes)
        if self.index.get(key) is not None:  # raced while the lock was released
            self.ram.free(page_bytes, slot)
            return None
        entry = Entry(key, page_bytes, EntryState.WRITING, ram_slot=slot, num_pins=1)
        return self.index.add(entry)

    def publish(self, entry: Entry) -> None:
        """Lock held. A written page becomes visible."""
        entry.state = EntryState.READY
        self.index.touch(entry)
        self.ram_counters.bytes_in += entry.page_bytes

    def discard(self, entry: Entry) -> None:
        """Lock held, entry unpinned. A page written in vain: forgotten, its slot freed."""
        self.index.remove(entry)
        self.ram.free(entry.page_bytes, entry.ram_slot)

    def unpin(self, entries: list[Entry]) -> None:
        """Unlocked."""
        with self.lock:
            for entry in entries:
                entry.num_pins -= 1
            self.lock.notify_all()

    def count_loads(self, num_hits: int, num_misses: int) -> None:
        """Lock held."""
        self.ram_counters.num_hits += num_hits
        self.ram_counters.num_misses += num_misses

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

    def _slot(self, entry: Entry) -> memoryview:
        return self.ram.arenas[entry.page_bytes].slot(entry.ram_slot)

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
        self.ram_counters.num_evictions += 1
        if not victim.is_on_disk:
            self.index.remove(victim)
        self.lock.notify_all()

    def _demote(self, entry: Entry) -> bool:
        """Unlocked, entry pinned in RAM: copy it to the next tier down."""
        if self.disk is not None:
            return self.disk.write(entry, self._slot(entry))
        return self._write_backing(entry)

    def _write_backing(self, entry: Entry) -> bool:
        """Unlocked, entry pinned in RAM: copy it to the backing; flag it there on success."""
        if not self.backing.write(entry, self._slot(entry)):
            return False
        with self.lock:
            entry.is_in_backing = True
        return True

    def can_copy_down(self) -> bool:
        return self.disk is not None or self.backing is not None

    def copy_down(self, entry: Entry) -> None:
        """Unlocked, entry pinned in RAM: write-through to every lower tier, then unpin."""
        if self.disk is not None and not entry.is_on_disk:
            self.disk.write(entry, self._slot(entry))
        if self.backing is not None and not entry.is_in_backing:
            self._write_backing(entry)
        self.unpin([entry])

    def write_disk(self, entries: list[Entry]) -> None:
        """Unlocked, entries pinned in RAM: copy them to the NVMe tier now (fsync=always)."""
        self.disk.write_all([(entry, self._slot(entry)) for entry in entries])

    # Promotion -----------------------------------------------------------------------------

    def promote_from_disk(self, entry: Entry) -> bool:
        """Lock held; may release it. Read a disk-only page into a RAM slot (checksum verified)."""
        entry.is_promoting = True
        entry.num_pins += 1
        try:
            slot = self._reserve_slot(entry.page_bytes)
            error = self.disk.read_into(entry, self.ram.arenas[entry.page_bytes].slot(slot))
        except NoRoom:
            slot, error = None, NoRoom("")
        entry.is_promoting = False
        entry.num_pins -= 1
        self.lock.notify_all()
        if error is None:
            entry.ram_slot = slot
            self.disk.counters.count_hit(entry.page_bytes)
            return True
        if slot is not None:
            self.ram.free(entry.page_bytes, slot)
            self.disk.forget_bad_copy(entry, error)
        return False

    def insert_page(self, key: bytes, data: bytes) -> Entry | None:
        """Lock held; may release it. A READY RAM entry holding `data` (an existing visible entry
        wins); None if the key is being written. Raises NoRoom."""
        entry = self.wait_promoted(key)
        if entry is None:
            slot = self._reserve_slot(len(data))
            entry = self.index.get(key)
            if entry is not None:  # raced while the lock was released
                self.ram.free(len(data), slot)
            else:
                self.ram.arenas[len(data)].page(slot, len(data))[:] = data
                entry = self.index.add(Entry(key, len(data), EntryState.READY, ram_slot=slot))
                self.ram_counters.bytes_in += len(data)
        return entry if entry.is_visible else None

    def read_page(self, key: bytes) -> bytes | None:
        """Unlocked. The bytes of a visible local page (RAM, else NVMe), or None; the page is
        pinned, not locked, while it is copied out."""
        with self.lock:
            entry = self.wait_promoted(key)
            if entry is None or not entry.is_visible:
                self.ram_counters.num_misses += 1
                return None
            entry.num_pins += 1
            self.index.touch(entry)
            slot = entry.ram_slot
        data, error = None, None
        try:
            if slot is not None:
                data = bytes(self.ram.arenas[entry.page_bytes].page(slot, entry.page_bytes))
            else:
                data = self.disk.read(entry)
        except (CorruptPage, FileNotFoundError) as failure:
            error = failure
        with self.lock:
            entry.num_pins -= 1
            if error is not None:
                self.disk.forget_bad_copy(entry, error)
                self.disk.counters.num_misses += 1
            else:
                (self.ram_counters if slot is not None else self.disk.counters).count_hit(len(data))
            self.lock.notify_all()
        return data

    # Integrity and stats -------------------------------------------------------------------

    def snapshots(self) -> list[TierSnapshot]:
        """Lock held. RAM, then NVMe and the backing where the store has them."""
        ram = [e for e in self.index if e.is_visible and e.ram_slot is not None]
        tiers = [TierSnapshot(Tier.RAM, len(ram), sum(e.page_bytes for e in ram),
                              self.ram.capacity_bytes, self.ram_counters)]
        if self.disk is not None:
            num_disk = sum(1 for e in self.index if e.is_visible and e.is_on_disk)
            tiers.append(TierSnapshot(Tier.DISK, num_disk, self.disk.num_bytes,
                                      self.disk.capacity_bytes, self.disk.counters))
        if self.backing is not None:
            tiers.append(TierSnapshot(Tier.REMOTE, 0, 0, 0, self.backing.counters))
        return tiers

    def check_integrity(self) -> None:
        """Lock held. Used RAM bytes == the slots entries hold."""
        held = sum(self.ram.arenas[e.page_bytes].slot_bytes
                   for e in self.index if e.ram_slot is not None)
        assert held == self.ram.num_used_bytes, (held, self.ram.num_used_bytes)
