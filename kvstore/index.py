"""Key -> location of every page this store holds. Guarded by the store's one lock; no I/O here."""
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import repeat

from kvstore.errors import InvalidArgument

KEY_BYTES = 32


def check_keys(keys: list[bytes]) -> None:
    """Raise InvalidArgument (naming the first bad key) unless every key has KEY_BYTES bytes."""
    for position, key in enumerate(keys):
        if len(key) != KEY_BYTES:
            raise InvalidArgument(f"key {position} has {len(key)} bytes: keys are 32-byte "
                                  "SHA-256 digests")


class EntryState(enum.Enum):
    WRITING = "writing"  # prepared by a store lease: invisible to Lookup and loads
    READY = "ready"


@dataclass(slots=True)
class Entry:
    """One page. `ram_slot` None: not in RAM. Pins protect it from eviction and from deletion
    while a lease reads it or the store moves it (demotion, promotion, write-through)."""

    key: bytes
    page_bytes: int
    state: EntryState
    ram_slot: int | None = None
    disk_segment: int | None = None  # where the NVMe tier holds it: segment and record offset
    disk_offset: int = 0
    is_in_backing: bool = False
    is_promoting: bool = False
    num_pins: int = 0
    last_access: int = 0
    created: int = 0

    @property
    def is_on_disk(self) -> bool:
        return self.disk_segment is not None

    @property
    def is_visible(self) -> bool:
        return self.state is EntryState.READY

    @property
    def can_leave_ram(self) -> bool:
        return self.is_visible and self.ram_slot is not None and self.num_pins == 0


class Index:
    """A dict of entries plus a logical clock for recency (monotonic, never wall time)."""

    def __init__(self) -> None:
        self.entries: dict[bytes, Entry] = {}
        self.clock = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())

    def get(self, key: bytes) -> Entry | None:
        return self.entries.get(key)

    def add(self, entry: Entry) -> Entry:
        assert entry.key not in self.entries, "one entry per key"
        self.clock += 1
        entry.created = entry.last_access = self.clock
        self.entries[entry.key] = entry
        return entry

    def add_disk_pages(self, keys: list[bytes], page_sizes: list[int], segment: int,
                       offsets: list[int]) -> list[Entry]:
        """READY disk-only entries for a segment's records, built in bulk (a rebuild indexes a
        million in about a second). A key already present is replaced: a later record of a
        key is a page written again after its earlier copy was forgotten."""
        start, self.clock = self.clock + 1, self.clock + len(keys)
        clock = range(start, self.clock + 1)
        entries = list(map(Entry, keys, page_sizes, repeat(EntryState.READY), repeat(None),
                           repeat(segment), offsets, repeat(False), repeat(False), repeat(0),
                           clock, clock))
        self.entries.update(zip(keys, entries))
        return entries

    def remove(self, entry: Entry) -> None:
        assert entry.num_pins == 0 or entry.state is EntryState.WRITING, "pinned entry removed"
        if self.entries.get(entry.key) is entry:
            del self.entries[entry.key]

    def touch(self, entry: Entry) -> None:
        self.clock += 1
        entry.last_access = self.clock

    def victim(self, can_evict: Callable[[Entry], bool],
               priority: Callable[[Entry], float]) -> Entry | None:
        """The evictable entry with the smallest priority, or None. O(entries): fine for the
        thousands of pages a RAM tier holds; a heap per policy would be next."""
        candidates = (entry for entry in self.entries.values() if can_evict(entry))
        return min(candidates, key=priority, default=None)
