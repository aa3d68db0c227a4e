"""The scheduler's connection to a kvstore: register the page layout, then the two-phase calls.

    down --(monitor thread: Register ok)--> registered --(engine: executor maps arena)--> up
    up   --(a call fails: unreachable, restarted, namespace lost)--> down

While the link is down every call returns None at once and the scheduler serves by recompute.
A kvstore that restarted hands out a new arena id: a reply naming another arena than the one the
executor mapped marks the link down too, so no page is ever copied into a stale mapping.
Only ids cross this link; page bytes move through the shared-memory arena.
"""
from __future__ import annotations

import logging
import threading
from typing import NamedTuple

import grpc

from protos.v1 import kvstore_pb2 as pb
from runtime.kvstore_client import ArenaLayout, KVStoreClient
from runtime.listen import RECONNECT_OPTIONS

log = logging.getLogger(__name__)

# A call that fails with one of these means the kvstore is gone or is not the one we registered with.
DOWN_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.CANCELLED, grpc.StatusCode.FAILED_PRECONDITION,
                        grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
                        grpc.StatusCode.UNAUTHENTICATED})
RETRY_SECONDS = 1.0


class SlotLease(NamedTuple):
    """A kvstore lease as the offloader uses it: arena slots, and the key each is for."""
    lease_id: int
    slots: list[int]              # loads: slot of each leading present key
    key_indexes: list[int]        # stores: which key each slot is for (loads: 0..n-1)


class KVStoreLink:
    def __init__(self, address: str, namespace: str, page_bytes: int, token: str | None = None,
                 timeout_s: float = 5.0):
        self.address, self.namespace, self.page_bytes = address, namespace, page_bytes
        self.client = KVStoreClient(address, token=token, timeout_s=timeout_s, options=RECONNECT_OPTIONS)
        self.layout: ArenaLayout | None = None          # mapped by the executor: the link is up
        self.registered: ArenaLayout | None = None      # waiting for the executor to map it
        self.is_closed = False
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.num_reconnects = 0
        self.last_register_failure: tuple | None = None   # (code, details) last logged
        self.monitor = threading.Thread(target=self._monitor, name="kvstore-link", daemon=True)

    @property
    def is_up(self) -> bool:
        return self.layout is not None

    def start(self) -> None:
        self.monitor.start()

    def close(self) -> None:
        self.is_closed = True
        self.wake.set()
        self.client.close()

    # ---- up / down -----------------------------------------------------------------------
    def _monitor(self) -> None:
        """Register whenever the link is down and nothing registered waits to be mapped."""
        while not self.is_closed:
            if self.layout is None and self.registered is None:
                layout = self._register()
                with self.lock:
                    if layout is not None and self.layout is None:
                        self.registered = layout
            self.wake.wait(RETRY_SECONDS)
            self.wake.clear()

    def _register(self) -> ArenaLayout | None:
        try:
            layout = self.client.register(self.namespace, self.page_bytes)
        except grpc.RpcError as error:
            self._log_register_failure(error)
            return None
        self.last_register_failure = None
        return layout

    def _log_register_failure(self, error: grpc.RpcError) -> None:
        """A refusal (the tier cannot hold a page, a bad token) at WARNING with the store's reason
        and the fix, once per distinct reason; a store that is not up (yet) at DEBUG: the link
        keeps retrying either way and the server serves by recompute meanwhile."""
        reason = (error.code(), error.details())
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
                or reason == self.last_register_failure:
            log.debug("kvstore %s: register failed: %s", self.address, error.code())
            return
        self.last_register_failure = reason
        log.warning("kvstore %s refused to register this server's pages (%s: %s); serving without "
                    "it by recompute until that is fixed", self.address, error.code().name, error.details())

    def take_registered(self) -> ArenaLayout | None:
        """Engine thread: a registered layout the executor must map before set_up()."""
        with self.lock:
            layout, self.registered = self.registered, None
        return layout

    def set_up(self, layout: ArenaLayout) -> None:
        self.layout = layout
        self.num_reconnects += 1
        log.info("kvstore %s attached (arena %s, %d slots)", self.address, layout.arena_id,
                 layout.num_slots)

    def mark_down(self, reason: str) -> None:
        if self.layout is not None:
            log.warning("kvstore %s is down (%s): serving by recompute until it is back",
                        self.address, reason)
        self.layout = None
        self.wake.set()

    # ---- calls (engine thread; None when down or refused) --------------------------------
    def _call(self, method, *args):
        if self.layout is None:
            return None
        try:
            return method(*args)
        except grpc.RpcError as error:
            if error.code() in DOWN_CODES:
                self.mark_down(f"{error.code().name}: {error.details()}")
            else:   # no room, an expired lease: this call failed, the link is fine
                log.info("kvstore %s: %s", error.code().name, error.details())
            return None

    def _is_same_arena(self, arena_id: str) -> bool:
        if self.layout is not None and arena_id == self.layout.arena_id:
            return True
        self.mark_down(f"it answered with arena {arena_id!r}: it restarted")
        return False

    def lookup(self, keys: list[bytes]) -> list[int] | None:
        """Tier (pb.Tier) of each leading present key."""
        result = self._call(self.client.lookup, self.namespace, keys)
        return None if result is None else result.tiers

    def prepare_store(self, keys: list[bytes]) -> SlotLease | None:
        plan = self._call(self.client.prepare_store, self.namespace, keys)
        if plan is None:
            return None
        if plan.slots and not self._is_same_arena(plan.arena_id):
            return None
        return SlotLease(plan.lease_id, [slot for _, slot in plan.slots],
                         [key_index for key_index, _ in plan.slots])

    def complete_store(self, lease_id: int, is_ok: bool) -> bool:
        return self._call(self.client.complete_store, lease_id, is_ok) is not None

    def prepare_load(self, keys: list[bytes]) -> SlotLease | None:
        plan = self._call(self.client.prepare_load, self.namespace, keys)
        if plan is None:
            return None
        if plan.slots and not self._is_same_arena(plan.arena_id):
            return None
        return SlotLease(plan.lease_id, plan.slots, list(range(len(plan.slots))))

    def complete_load(self, lease_id: int) -> bool:
        return self._call(self.client.complete_load, lease_id) is not None

    def stats(self) -> pb.StatsResponse | None:
        """Any thread."""
        try:
            return self.client.stats(timeout_s=1.0)
        except grpc.RpcError:
            return None

    def metrics_text(self) -> str | None:
        """Any thread: the kvstore's Prometheus text; None when it does not answer (whether or not
        the link is up: a scrape asks the store itself)."""
        try:
            return self.client.metrics(timeout_s=1.0)
        except grpc.RpcError:
            return None
