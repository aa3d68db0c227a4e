"""The kvstore's operations (what the gRPC service exposes), over the tier mechanism.

Contract (see protos/v1/kvstore.proto for the wire view):
- A page is visible (Lookup, PrepareLoad, GetPages) only after CompleteStore(ok) or PutPages.
- A page pinned by a load lease, or being written under a store lease, is never evicted.
- Leases expire after `lease_ttl_s`: a store lease rolls back, a load lease unpins.
- Bad input raises a KVStoreError subclass and changes no state.
"""
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

from kvstore.disk import FsyncMode, PageFiles, file_bytes
from kvstore.errors import InvalidArgument, LeaseNotFound, NoRoom, NotRegistered
from kvstore.index import Entry, EntryState
from kvstore.leases import Lease, LeaseKind, LeaseTable
from kvstore.policy import POLICIES
from kvstore.ram import RamTier
from kvstore.remote import RemotePages, check_keys
from kvstore.tiers import Tier, TierCounters
from runtime.kvstore_client import KVStoreClient, LoadPlan, StorePlan

log = logging.getLogger("strata.kvstore")


@dataclass(slots=True)
class StoreConfig:
    ram_bytes: int
    shm_dir: str = "/dev/shm"
    disk_dir: str | None = None
    disk_bytes: int = 0
    fsync: FsyncMode = FsyncMode.BATCH
    is_write_through: bool = False
    lease_ttl_s: float = 30.0
    policy: str = "lru"


class RegisterResult(NamedTuple):
    arena_id: str
    arena_path: str
    slot_bytes: int
    num_slots: int
    page_bytes: int


class TierSnapshot(NamedTuple):
    tier: Tier
    num_pages: int
    num_bytes: int
    capacity_bytes: int
    counters: TierCounters


class Store(RemotePages):
    def __init__(self, config: StoreConfig, backing: KVStoreClient | None = None) -> None:
        disk = PageFiles(config.disk_dir, config.fsync) if config.disk_dir else None
        super().__init__(RamTier(config.shm_dir, config.ram_bytes), disk, config.disk_bytes,
                         backing, POLICIES[config.policy]())
        self.config = config
        self.namespaces: dict[str, int] = {}
        self.leases = LeaseTable(config.lease_ttl_s)
        self.mover = ThreadPoolExecutor(1, thread_name_prefix="kv-mover")  # FIFO write-through
        self.is_closed = threading.Event()
        self.num_rebuilt, self.rebuild_s = self._rebuild()
        threading.Thread(target=self._background, name="kv-reaper", daemon=True).start()

    def _rebuild(self) -> tuple[int, float]:
        start = time.perf_counter()
        if self.disk is None:
            return 0, 0.0
        for page in self.disk.rebuild():
            self.index.add(Entry(page.key, page.page_bytes, EntryState.READY, is_on_disk=True))
            self.num_disk_bytes += file_bytes(page.page_bytes)
        with self.lock:
            self._reserve_disk(0)  # a smaller --disk-size than last run: drop LRU files
        return len(self.index), time.perf_counter() - start

    def _background(self) -> None:
        """Reclaim expired leases; in fsync=batch mode, make recent page files durable."""
        interval_s = min(max(self.config.lease_ttl_s / 4, 0.02), 0.2)
        while not self.is_closed.wait(interval_s):
            with self.lock:
                self._reap_expired()
            if self.disk is not None and self.config.fsync is FsyncMode.BATCH:
                self.disk.flush()

    def _reap_expired(self) -> None:
        for lease in self.leases.pop_expired():
            log.info("lease %d (%s) expired: reclaimed", lease.lease_id, lease.kind.value)
            self._end_lease(lease, is_ok=False)

    def _end_lease(self, lease: Lease, is_ok: bool) -> None:
        """Lock held. Publish or roll back a store lease; unpin a load lease."""
        for entry in lease.entries:
            entry.num_pins -= 1
            if lease.kind is LeaseKind.LOAD:
                continue
            if is_ok:
                entry.state = EntryState.READY
                self.index.touch(entry)
                self.counters[Tier.RAM].bytes_in += entry.page_bytes
            else:
                self.index.remove(entry)
                self.ram.free(entry.page_bytes, entry.ram_slot)
        self.lock.notify_all()

    def _page_bytes(self, namespace: str) -> int:
        page_bytes = self.namespaces.get(namespace)
        if page_bytes is None:
            raise NotRegistered(f"namespace {namespace!r} is not registered: register first")
        return page_bytes

    def register(self, namespace: str, page_bytes: int) -> RegisterResult:
        if not namespace or page_bytes <= 0:
            raise InvalidArgument("Register needs a non-empty namespace and page_bytes > 0")
        with self.lock:
            known = self.namespaces.get(namespace)
            if known is not None and known != page_bytes:
                raise InvalidArgument(f"namespace {namespace!r} has page_bytes {known}, not "
                                      f"{page_bytes}: use a new namespace for a new layout")
            arena = self.ram.arena(page_bytes)
            self.namespaces[namespace] = page_bytes
        return RegisterResult(self.ram.arena_id(page_bytes), arena.path, arena.slot_bytes,
                              arena.num_slots, page_bytes)

    def lookup(self, namespace: str, keys: list[bytes]) -> list[Tier]:
        """Tiers of the leading present keys; "" namespace: any page size (kvstore to kvstore)."""
        check_keys(keys)
        with self.lock:
            page_bytes = self._page_bytes(namespace) if namespace else None
            tiers = []
            for key in keys:
                entry = self.index.get(key)
                if entry is None or not entry.is_visible or \
                        page_bytes not in (None, entry.page_bytes):
                    break
                tiers.append(Tier.RAM if entry.ram_slot is not None else Tier.DISK)
        if len(tiers) < len(keys) and self.backing is not None:
            tiers += [Tier.REMOTE] * self._lookup_backing(keys[len(tiers):])
        return tiers

    def prepare_store(self, namespace: str, keys: list[bytes]) -> StorePlan:
        check_keys(keys)
        with self.lock:
            page_bytes = self._page_bytes(namespace)
            self._reap_expired()
            lease = self.leases.open(LeaseKind.STORE)
            slots = []
            try:
                for key_index, key in enumerate(keys):
                    slot = self._prepare_one(key, page_bytes, lease)
                    if slot is not None:
                        slots.append((key_index, slot))
            except NoRoom:
                self.leases.close(lease.lease_id, LeaseKind.STORE)
                self._end_lease(lease, is_ok=False)
                raise
        return StorePlan(lease.lease_id, slots)

    def _prepare_one(self, key: bytes, page_bytes: int, lease: Lease) -> int | None:
        """Lock held; may release it. A slot for `key`, or None if present or in flight."""
        if self.index.get(key) is not None:
            return None
        slot = self._reserve_slot(page_bytes)
        if self.index.get(key) is not None:  # raced while the lock was released
            self.ram.free(page_bytes, slot)
            return None
        entry = Entry(key, page_bytes, EntryState.WRITING, ram_slot=slot, num_pins=1)
        lease.entries.append(self.index.add(entry))
        return slot

    def complete_store(self, lease_id: int, is_ok: bool) -> int:
        """With an NVMe tier and fsync=always, returns once every page is durable on disk."""
        with self.lock:
            lease = self._close_lease(lease_id, LeaseKind.STORE)
            self._end_lease(lease, is_ok)
            if not is_ok:
                return 0
            for entry in lease.entries:
                entry.num_pins += 1  # kept until the copies below are done
        if self.disk is not None and self.config.fsync is FsyncMode.ALWAYS:
            for entry in lease.entries:
                self._write_disk(entry, self.ram.arenas[entry.page_bytes].slot(entry.ram_slot))
        self._after_publish(lease.entries)
        return len(lease.entries)

    def _after_publish(self, entries: list[Entry]) -> None:
        """Unlocked, entries pinned: hand them to the write-through mover, or unpin."""
        if self.config.is_write_through and (self.disk or self.backing):
            for entry in entries:
                self.mover.submit(self._copy_down, entry)
            return
        with self.lock:
            for entry in entries:
                entry.num_pins -= 1
            self.lock.notify_all()

    def _close_lease(self, lease_id: int, kind: LeaseKind) -> Lease:
        lease = self.leases.close(lease_id, kind)
        if lease is None:
            raise LeaseNotFound(f"{kind.value} lease {lease_id} is unknown or expired (TTL "
                                f"{self.config.lease_ttl_s} s): prepare again")
        return lease

    def prepare_load(self, namespace: str, keys: list[bytes]) -> LoadPlan:
        check_keys(keys)
        with self.lock:
            page_bytes = self._page_bytes(namespace)
            self._reap_expired()
            lease = self.leases.open(LeaseKind.LOAD)
            self._pin_local(keys, page_bytes, lease)
        if len(lease.entries) < len(keys) and self.backing is not None:
            self._pin_from_backing(keys[len(lease.entries):], page_bytes, lease)
        with self.lock:
            self.counters[Tier.RAM].num_hits += len(lease.entries)
            self.counters[Tier.RAM].num_misses += len(keys) - len(lease.entries)
            return LoadPlan(lease.lease_id, [entry.ram_slot for entry in lease.entries])

    def _pin_local(self, keys: list[bytes], page_bytes: int, lease: Lease) -> None:
        """Lock held; may release it. Pin the leading local pages, promoting from NVMe."""
        for key in keys:
            entry = self._wait_promoted(key)
            if entry is None or not entry.is_visible or entry.page_bytes != page_bytes:
                return
            if entry.ram_slot is None and not self._promote_from_disk(entry):
                return
            self._pin(entry, lease)

    def _pin(self, entry: Entry, lease: Lease) -> None:
        entry.num_pins += 1
        self.index.touch(entry)
        lease.entries.append(entry)

    def _pin_from_backing(self, keys: list[bytes], page_bytes: int, lease: Lease) -> None:
        """Unlocked. Promote the leading pages the backing holds into RAM and pin them."""
        fetched = self._fetch_backing(keys)
        with self.lock:
            for key in keys:
                data = fetched.get(key)
                if data is None or len(data) != page_bytes:
                    return
                try:
                    entry = self._insert_page(key, data)
                except NoRoom:
                    return
                if entry is None or (entry.ram_slot is None and not self._promote_from_disk(entry)):
                    return
                entry.is_in_backing = True
                self.counters[Tier.REMOTE].num_hits += 1
                self.counters[Tier.REMOTE].bytes_out += page_bytes
                self._pin(entry, lease)

    def complete_load(self, lease_id: int) -> int:
        with self.lock:
            lease = self._close_lease(lease_id, LeaseKind.LOAD)
            self._end_lease(lease, is_ok=True)
        return len(lease.entries)

    def stats(self) -> tuple[list[TierSnapshot], int, int, int]:
        """(tiers, num_leases, num_expired_leases, num_namespaces)."""
        with self.lock:
            ram = [e for e in self.index if e.is_visible and e.ram_slot is not None]
            disk = [e for e in self.index if e.is_visible and e.is_on_disk]
            tiers = [TierSnapshot(Tier.RAM, len(ram), sum(e.page_bytes for e in ram),
                                  self.ram.capacity_bytes, self.counters[Tier.RAM])]
            if self.disk is not None:
                tiers.append(TierSnapshot(Tier.DISK, len(disk), self.num_disk_bytes,
                                          self.disk_capacity_bytes, self.counters[Tier.DISK]))
            if self.backing is not None:
                tiers.append(TierSnapshot(Tier.REMOTE, 0, 0, 0, self.counters[Tier.REMOTE]))
            return tiers, len(self.leases), self.leases.num_expired, len(self.namespaces)

    def flush(self) -> None:
        """Wait for every write-through queued so far (the mover runs tasks in order)."""
        self.mover.submit(lambda: None).result()

    def check_integrity(self) -> None:
        """Idle invariant: used RAM bytes == slots held by entries; pins == open lease pins."""
        with self.lock:
            held = sum(self.ram.arenas[e.page_bytes].slot_bytes
                       for e in self.index if e.ram_slot is not None)
            assert held == self.ram.num_used_bytes, (held, self.ram.num_used_bytes)
            pins = sum(e.num_pins for e in self.index)
            leased = sum(len(lease.entries) for lease in self.leases.leases.values())
            assert pins == leased, (pins, leased)

    def close(self) -> None:
        self.is_closed.set()
        self.mover.shutdown(wait=True)
        self.io.shutdown(wait=True)
        if self.disk is not None:
            self.disk.flush()
        self.ram.close()
        if self.backing is not None:
            self.backing.close()
