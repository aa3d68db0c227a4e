"""RamTier: an arena's memory is touched ahead of the slots handed out, never all at creation."""
import os

from kvstore import ram
from kvstore.ram import RamTier

MIB = 1 << 20


def resident_bytes(path: str) -> int:
    """Bytes the shared-memory file holds (tmpfs counts only touched pages)."""
    return os.stat(path).st_blocks * 512


def test_an_arena_is_prefaulted_in_chunks_as_its_slots_are_handed_out(tmp_path, monkeypatch):
    monkeypatch.setattr(ram, "PREFAULT_CHUNK_BYTES", 4 * MIB)
    tier = RamTier(str(tmp_path), 16 * MIB)
    try:
        arena = tier.arena(MIB)   # 16 slots of 1 MiB
        assert arena.num_slots == 16 and resident_bytes(arena.path) == 0
        assert [tier.allocate(MIB) for _ in range(4)] == [0, 1, 2, 3]
        assert resident_bytes(arena.path) == 4 * MIB and tier.num_prefaulted_bytes == 4 * MIB
        assert tier.allocate(MIB) == 4   # the next chunk
        assert resident_bytes(arena.path) == 8 * MIB
        tier.free(MIB, 2)
        assert tier.allocate(MIB) == 2   # already touched: nothing more
        assert resident_bytes(arena.path) == 8 * MIB
    finally:
        tier.close()


def test_prefaulting_stops_at_the_tier_budget_across_arenas(tmp_path, monkeypatch):
    monkeypatch.setattr(ram, "PREFAULT_CHUNK_BYTES", 8 * MIB)
    tier = RamTier(str(tmp_path), 12 * MIB)
    try:
        assert tier.can_allocate(MIB) and tier.allocate(MIB) == 0
        small = tier.arena(MIB)
        assert resident_bytes(small.path) == 8 * MIB
        assert tier.can_allocate(2 * MIB)
        tier.allocate(2 * MIB)
        large = tier.arena(2 * MIB)
        assert resident_bytes(large.path) == 4 * MIB   # what is left of the 12 MiB
        assert tier.num_prefaulted_bytes == 12 * MIB
    finally:
        tier.close()
