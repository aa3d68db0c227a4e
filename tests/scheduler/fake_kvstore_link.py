"""A test double of scheduler/kv_link.py's KVStoreLink: an in-memory kvstore, no gRPC, no thread.

Exact and predictable: slots are handed out in order from FIRST_SLOT, lease ids from 1, and every
call is recorded in `calls` (name, argument) so a test can assert what reached the kvstore.

    pages       key -> tier (pb.Tier) of the pages it holds; put() seeds it
    leases      open lease id -> ("load" | "store", keys): pinned until complete_load/_store
    registered  a layout waiting for set_up() (the real link's monitor thread registers it)
"""
from __future__ import annotations

from protos.v1 import kvstore_pb2 as pb
from runtime.kvstore_client import ArenaLayout
from scheduler.kv_link import SlotLease

FIRST_SLOT = 100
LAYOUT = ArenaLayout(namespace="fake-model", arena_id="arena-1", arena_path="/dev/shm/fake-arena",
                     slot_bytes=4096, num_slots=1024, page_bytes=4096)


class FakeKVStoreLink:
    def __init__(self, layout: ArenaLayout = LAYOUT):
        self.pages: dict[bytes, int] = {}
        self.leases: dict[int, tuple[str, list[bytes]]] = {}
        self.layout: ArenaLayout | None = None
        self.registered: ArenaLayout | None = layout
        self.calls: list[tuple[str, object]] = []
        self.next_lease_id = 1
        self.next_slot = FIRST_SLOT
        self.num_reconnects = 0
        self.is_closed = False
        self.metrics: str | None = None

    def put(self, keys: list[bytes], tier: int = pb.TIER_RAM) -> None:
        for key in keys:
            self.pages[key] = tier

    @property
    def is_up(self) -> bool:
        return self.layout is not None

    # ---- up / down -----------------------------------------------------------------------
    def start(self) -> None:
        pass

    def close(self) -> None:
        self.is_closed = True

    def take_registered(self) -> ArenaLayout | None:
        layout, self.registered = self.registered, None
        return layout

    def set_up(self, layout: ArenaLayout) -> None:
        self.layout = layout
        self.num_reconnects += 1

    def mark_down(self, reason: str) -> None:
        self.calls.append(("mark_down", reason))
        self.layout = None

    # ---- calls (None when down) ----------------------------------------------------------
    def lookup(self, keys: list[bytes]) -> list[int] | None:
        self.calls.append(("lookup", list(keys)))
        if not self.is_up:
            return None
        return [self.pages[key] for key in self._leading_present(keys)]

    def prepare_load(self, keys: list[bytes]) -> SlotLease | None:
        self.calls.append(("prepare_load", list(keys)))
        if not self.is_up:
            return None
        present = self._leading_present(keys)
        slots = self._take_slots(len(present))
        return SlotLease(self._open_lease("load", present), slots, list(range(len(slots))))

    def complete_load(self, lease_id: int) -> bool:
        self.calls.append(("complete_load", lease_id))
        assert self.leases.pop(lease_id)[0] == "load", lease_id
        return True

    def prepare_store(self, keys: list[bytes]) -> SlotLease | None:
        """Dedup as the kvstore does: only the keys it lacks get a slot."""
        self.calls.append(("prepare_store", list(keys)))
        if not self.is_up:
            return None
        key_indexes = [index for index, key in enumerate(keys) if key not in self.pages]
        slots = self._take_slots(len(key_indexes))
        return SlotLease(self._open_lease("store", [keys[i] for i in key_indexes]), slots, key_indexes)

    def complete_store(self, lease_id: int, is_ok: bool) -> bool:
        self.calls.append(("complete_store", (lease_id, is_ok)))
        kind, keys = self.leases.pop(lease_id)
        assert kind == "store", lease_id
        if is_ok:
            self.put(keys)
        return True

    def stats(self) -> pb.StatsResponse | None:
        return None

    def metrics_text(self) -> str | None:
        """What the kvstore's GetMetrics answers: `metrics`, a test sets it (None: no answer)."""
        return self.metrics

    # ---- helpers -------------------------------------------------------------------------
    def _leading_present(self, keys: list[bytes]) -> list[bytes]:
        present = []
        for key in keys:
            if key not in self.pages:
                break
            present.append(key)
        return present

    def _take_slots(self, num_slots: int) -> list[int]:
        slots = list(range(self.next_slot, self.next_slot + num_slots))
        self.next_slot += num_slots
        return slots

    def _open_lease(self, kind: str, keys: list[bytes]) -> int:
        lease_id, self.next_lease_id = self.next_lease_id, self.next_lease_id + 1
        self.leases[lease_id] = (kind, keys)
        return lease_id
