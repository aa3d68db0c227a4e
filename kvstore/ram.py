"""The RAM tier: one arena per page size, all under one byte budget."""
import logging
import os

from kvstore.arena import Arena, align_up
from kvstore.errors import InvalidArgument
from runtime.arenas import ARENA_NAME, arena_file_name, new_arena_tag

log = logging.getLogger("strata.kvstore")

# An arena is pre-faulted ahead of the slots handed out, this much at a time.
PREFAULT_CHUNK_BYTES = 64 << 20


def remove_stale_arenas(shm_dir: str) -> int:
    """Unlink arena files left by kvstores that died without closing (kill -9): their memory
    stays allocated in tmpfs until the file is gone. A file is stale when its pid is not alive,
    or is this process's own pid (a previous life of a restarted container)."""
    num_removed = _remove_arenas(shm_dir, lambda pid: not _is_other_live_process(pid))
    if num_removed:
        log.info("removed %d stale arena file(s) of dead kvstores from %s", num_removed, shm_dir)
    return num_removed


def remove_arenas_of(pid: int, shm_dir: str) -> int:
    """Unlink the arena files of the kvstore process `pid`, which the caller saw die (it reaped
    it, so the pid names no live process yet): the supervisor frees a dead store's RAM at once."""
    return _remove_arenas(shm_dir, lambda owner: owner == pid)


def _remove_arenas(shm_dir: str, is_removable) -> int:
    num_removed = 0
    for name in os.listdir(shm_dir) if os.path.isdir(shm_dir) else ():
        match = ARENA_NAME.fullmatch(name)
        if match is None or not is_removable(int(match.group(1))):
            continue
        try:
            os.unlink(os.path.join(shm_dir, name))
            num_removed += 1
        except OSError:
            continue
    return num_removed


def _is_other_live_process(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, another user's
        return True
    return True


class RamTier:
    """Slot bookkeeping only; the store decides what to evict when `can_allocate` is False.

    Each arena is sized to the whole budget (tmpfs files are sparse) so any layout may use all
    of it; `num_used_bytes` over all arenas never exceeds `capacity_bytes`."""

    def __init__(self, shm_dir: str, capacity_bytes: int) -> None:
        self.shm_dir = shm_dir
        self.capacity_bytes = capacity_bytes
        self.arenas: dict[int, Arena] = {}
        self.free_slots: dict[int, list[int]] = {}
        self.num_used_bytes = 0
        self.num_prefaulted_bytes = 0
        self.prefaulted_bytes: dict[int, int] = {}   # per arena: the prefix already touched
        self.tag = new_arena_tag(os.getpid())
        remove_stale_arenas(shm_dir)

    def arena_id(self, page_bytes: int) -> str:
        """Unique per kvstore process: a client that sees a new id knows the store restarted
        and that it must map the new arena before moving pages."""
        return f"ram-{page_bytes}-{self.tag.rsplit('-', 1)[-1]}"

    def arena(self, page_bytes: int) -> Arena:
        """The arena of this page size, created (and pre-faulted within the budget) on first use."""
        arena = self.arenas.get(page_bytes)
        if arena is not None:
            return arena
        slot_bytes = align_up(page_bytes)
        num_slots = self.capacity_bytes // slot_bytes
        if num_slots == 0:
            raise InvalidArgument(f"page_bytes {page_bytes} exceeds the RAM tier "
                                  f"({self.capacity_bytes} bytes): raise --ram")
        path = os.path.join(self.shm_dir, arena_file_name(self.tag, page_bytes))
        arena = Arena.create(path, slot_bytes, num_slots)
        self.arenas[page_bytes] = arena
        self.prefaulted_bytes[page_bytes] = 0
        self.free_slots[page_bytes] = list(range(num_slots - 1, -1, -1))  # pop() gives slot 0 first
        return arena

    def can_allocate(self, page_bytes: int) -> bool:
        arena = self.arena(page_bytes)
        return bool(self.free_slots[page_bytes]) and \
            self.num_used_bytes + arena.slot_bytes <= self.capacity_bytes

    def allocate(self, page_bytes: int) -> int:
        assert self.can_allocate(page_bytes), "call can_allocate first"
        self.num_used_bytes += self.arenas[page_bytes].slot_bytes
        slot = self.free_slots[page_bytes].pop()
        self._prefault_through(page_bytes, slot)
        return slot

    def _prefault_through(self, page_bytes: int, slot: int) -> None:
        """Pre-fault the arena up to and including `slot`, PREFAULT_CHUNK_BYTES at a time, while
        the budget allows. Slots are handed out from 0 up, so the touched prefix grows with use:
        touching the whole arena at its creation costs a core for ~25 s on a 3 GiB tier (first
        touch ~1 GB/s), on a 2-core host half its compute, whether or not the pages are used."""
        arena = self.arenas[page_bytes]
        start = self.prefaulted_bytes[page_bytes]
        needed = (slot + 1) * arena.slot_bytes
        if needed <= start:
            return
        stop = min(arena.slot_bytes * arena.num_slots, max(needed, start + PREFAULT_CHUNK_BYTES),
                   start + max(self.capacity_bytes - self.num_prefaulted_bytes, 0))
        if stop > start:
            arena.prefault(start, stop)
            self.num_prefaulted_bytes += stop - start
            self.prefaulted_bytes[page_bytes] = stop

    def free(self, page_bytes: int, slot: int) -> None:
        self.num_used_bytes -= self.arenas[page_bytes].slot_bytes
        self.free_slots[page_bytes].append(slot)

    def free_and_release(self, page_bytes: int, slot: int) -> None:
        """Free a slot and return its memory: the budget moves to another arena."""
        self.free(page_bytes, slot)
        self.arenas[page_bytes].release_memory(slot)

    def close(self) -> None:
        for arena in self.arenas.values():
            arena.close()
            arena.unlink()
        self.arenas.clear()
