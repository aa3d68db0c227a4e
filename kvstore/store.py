"""The kvstore's operations (what the gRPC service exposes), over the tier mechanism.

Contract (see protos/v1/kvstore.proto for the wire view):
- A page is visible (Lookup, PrepareLoad, GetPages) only after CompleteStore(ok) or PutPages.
- A page pinned by a load lease, or being written under a store lease, is never evicted.
- Leases expire after `lease_ttl_s`: a store lease rolls back, a load lease unpins.
- Bad input raises a KVStoreError subclass and changes no state.

The store owns its parts and one lock (a Condition) that it hands to each: the index (key ->
entry), the lease table, the RAM tier, the optional NVMe tier and backing, the tier mechanism
over them (tiers.py) and the remote path (remote.py).
"""
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

from kvstore.backing import Backing
from kvstore.disk import FsyncMode
from kvstore.disk_tier import DiskTier
from kvstore.errors import InvalidArgument, NoRoom, NotRegistered
from kvstore.index import Entry, Index, check_keys
from kvstore.leases import Lease, LeaseKind, LeaseTable
from kvstore.policy import POLICIES
from kvstore.ram import RamTier
from kvstore.remote import RemotePages
from kvstore.segments import SegmentFiles
from kvstore.stats import StoreStats, Tier
from kvstore.tiers import Tiers
from runtime.arenas import DEFAULT_ARENA_DIR
from runtime.kvstore_client import LoadPlan, StorePlan

log = logging.getLogger("strata.kvstore")


@dataclass(slots=True)
class StoreConfig:
    ram_bytes: int
    shm_dir: str = DEFAULT_ARENA_DIR
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


class Store:
    def __init__(self, config: StoreConfig, backing: Backing | None = None) -> None:
        """`backing`: the tier below (daemon.open_backing builds it from --backing); the store
        owns it from here and closes it."""
        self.config = config
        self.lock = threading.Condition(threading.Lock())
        self.index = Index()
        self.leases = LeaseTable(config.lease_ttl_s)
        self.namespaces: dict[str, int] = {}  # namespace -> page_bytes
        policy = POLICIES[config.policy]()
        self.ram = RamTier(config.shm_dir, config.ram_bytes)
        self.disk = DiskTier(SegmentFiles(config.disk_dir, config.fsync), config.disk_bytes,
                             self.lock, self.index) if config.disk_dir else None
        self.backing = backing
        self.tiers = Tiers(self.lock, self.index, self.ram, self.disk, self.backing, policy)
        self.remote_pages = RemotePages(self.lock, self.index, self.tiers, self.backing,
                                        publish=self._after_publish)
        self.mover = ThreadPoolExecutor(1, thread_name_prefix="kv-mover")  # FIFO write-through
        self.is_closed = threading.Event()
        self.num_rebuilt, self.rebuild_s = self._rebuild()
        threading.Thread(target=self._background, name="kv-reaper", daemon=True).start()

    def _rebuild(self) -> tuple[int, float]:
        """(pages indexed from the NVMe tier's segments, seconds it took)."""
        if self.disk is None:
            return 0, 0.0
        start = time.perf_counter()
        return self.disk.rebuild(), time.perf_counter() - start

    def _background(self) -> None:
        """Reclaim expired leases; in fsync=batch mode, make recent NVMe records durable."""
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
                self.tiers.publish(entry)
            else:
                self.tiers.discard(entry)
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

    def arena_id(self, namespace: str) -> str:
        """The id of the arena a registered namespace's pages live in (RegisterResult.arena_id)."""
        with self.lock:
            return self.ram.arena_id(self._page_bytes(namespace))

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
            tiers += [Tier.REMOTE] * self.backing.num_leading_present(keys[len(tiers):])
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
                    entry = self.tiers.prepare_page(key, page_bytes)
                    if entry is not None:
                        lease.entries.append(entry)
                        slots.append((key_index, entry.ram_slot))
            except NoRoom:
                self.leases.close(lease.lease_id, LeaseKind.STORE)
                self._end_lease(lease, is_ok=False)
                raise
        return StorePlan(lease.lease_id, slots)

    def complete_store(self, lease_id: int, is_ok: bool) -> int:
        """With an NVMe tier and fsync=always, returns once every page is durable on disk."""
        with self.lock:
            lease = self.leases.close(lease_id, LeaseKind.STORE)
            self._end_lease(lease, is_ok)
            if not is_ok:
                return 0
            for entry in lease.entries:
                entry.num_pins += 1  # kept until the copies below are done
        if self.disk is not None and self.config.fsync is FsyncMode.ALWAYS:
            self.tiers.write_disk(lease.entries)
        self._after_publish(lease.entries)
        return len(lease.entries)

    def _after_publish(self, entries: list[Entry]) -> None:
        """Unlocked, entries pinned: hand them to the write-through mover, or unpin."""
        if self.is_write_through and self.tiers.can_copy_down():
            for entry in entries:
                self.mover.submit(self.tiers.copy_down, entry)
            return
        self.tiers.unpin(entries)

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
            self.tiers.count_loads(len(lease.entries), len(keys) - len(lease.entries))
            return LoadPlan(lease.lease_id, [entry.ram_slot for entry in lease.entries])

    def _pin_local(self, keys: list[bytes], page_bytes: int, lease: Lease) -> None:
        """Lock held; may release it. Pin the leading local pages, promoting from NVMe."""
        for key in keys:
            entry = self.tiers.wait_promoted(key)
            if entry is None or not entry.is_visible or entry.page_bytes != page_bytes:
                return
            if entry.ram_slot is None and not self.tiers.promote_from_disk(entry):
                return
            self._pin(entry, lease)

    def _pin(self, entry: Entry, lease: Lease) -> None:
        entry.num_pins += 1
        self.index.touch(entry)
        lease.entries.append(entry)

    def _pin_from_backing(self, keys: list[bytes], page_bytes: int, lease: Lease) -> None:
        """Unlocked. Promote the leading pages the backing holds into RAM and pin them."""
        fetched = self.backing.fetch(keys)
        with self.lock:
            for key in keys:
                data = fetched.get(key)
                if data is None or len(data) != page_bytes:
                    return
                try:
                    entry = self.tiers.insert_page(key, data)
                except NoRoom:
                    return
                if entry is None or (entry.ram_slot is None and
                                     not self.tiers.promote_from_disk(entry)):
                    return
                entry.is_in_backing = True
                self.backing.count_hit(page_bytes)
                self._pin(entry, lease)

    def complete_load(self, lease_id: int) -> int:
        with self.lock:
            lease = self.leases.close(lease_id, LeaseKind.LOAD)
            self._end_lease(lease, is_ok=True)
        return len(lease.entries)

    def put_pages(self, pages: Iterable[tuple[bytes, bytes]]) -> tuple[int, int]:
        """Store whole pages (the remote path). Returns (num_stored, num_present)."""
        return self.remote_pages.put_pages(pages)

    def get_pages(self, keys: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """(key, bytes) of the present pages: local ones in request order, then the backing's."""
        return self.remote_pages.get_pages(keys)

    def stats(self) -> StoreStats:
        """Pages, bytes and counters per tier; open and expired leases; namespaces."""
        with self.lock:
            return StoreStats(self.tiers.snapshots(), len(self.leases), self.leases.num_expired,
                              len(self.namespaces))

    @property
    def is_write_through(self) -> bool:
        """--write-through, or a shared backing (other instances must see pages soon)."""
        return self.config.is_write_through or (self.backing is not None and self.backing.is_shared)

    @property
    def disk_capacity_bytes(self) -> int:
        """The NVMe tier's budget now: --disk-size, or what the disk held when it filled."""
        return self.disk.capacity_bytes if self.disk is not None else 0

    def flush(self) -> None:
        """Wait for every write-through queued so far (the mover runs tasks in order)."""
        self.mover.submit(lambda: None).result()

    def check_integrity(self) -> None:
        """Idle invariant: used RAM bytes == slots held by entries; pins == open lease pins."""
        with self.lock:
            self.tiers.check_integrity()
            pins = sum(e.num_pins for e in self.index)
            leased = sum(len(lease.entries) for lease in self.leases)
            assert pins == leased, (pins, leased)

    def close(self) -> None:
        self.is_closed.set()
        self.mover.shutdown(wait=True)
        if self.disk is not None:
            self.disk.close()
        self.ram.close()
        if self.backing is not None:
            self.backing.close()
