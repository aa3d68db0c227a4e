"""Same-host page I/O through a kvstore's shared-memory arena: map it, then the two phases
around copying whole pages in or out (tests and bench; the executor maps arenas itself)."""
from kvstore.arena import Arena
from runtime.kvstore_client import ArenaLayout, KVStoreClient


def map_arena(layout: ArenaLayout) -> Arena:
    """Map the arena of a registered layout (same host only)."""
    return Arena.open(layout.arena_path, layout.slot_bytes, layout.num_slots)


def store_pages(client: KVStoreClient, arena: Arena, layout: ArenaLayout,
                pages: list[tuple[bytes, bytes]]) -> int:
    """Two-phase store of whole pages through the arena; returns how many were written."""
    plan = client.prepare_store(layout.namespace, [key for key, _ in pages])
    for key_index, slot in plan.slots:
        arena.page(slot, layout.page_bytes)[:] = pages[key_index][1]
    client.complete_store(plan.lease_id)
    return len(plan.slots)


def load_pages(client: KVStoreClient, arena: Arena, layout: ArenaLayout,
               keys: list[bytes]) -> list[bytes]:
    """Two-phase load: bytes of the leading present keys."""
    plan = client.prepare_load(layout.namespace, keys)
    try:
        return [bytes(arena.page(slot, layout.page_bytes)) for slot in plan.slots]
    finally:
        client.complete_load(plan.lease_id)
