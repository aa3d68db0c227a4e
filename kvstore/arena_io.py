"""A small synchronous client of strata.v1.KVStore (used by the scheduler, the executor and by a
kvstore talking to its backing). Ids cross the wire; page bytes only in put_pages/get_pages."""
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import grpc

from kvstore.arena import Arena
from protos.v1 import kvstore_pb2 as pb
from protos.v1 import kvstore_pb2_grpc

# Pages travel whole in one message; 4 MiB pages and above need more than gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


class Layout(NamedTuple):
    namespace: str
    arena_id: str
    arena_path: str
    slot_bytes: int
    num_slots: int
    page_bytes: int


class LookupResult(NamedTuple):
    num_present: int
    tiers: list[int]  # pb.Tier values of the present keys


class StorePlan(NamedTuple):
    lease_id: int
    slots: list[tuple[int, int]]  # (key_index, slot) of each key to write


class LoadPlan(NamedTuple):
    lease_id: int
    slots: list[int]  # slot of each leading present key


def open_channel(address: str, ca_pem: bytes | None = None) -> grpc.Channel:
    """`address` is host:port or unix:/path. With `ca_pem` the channel uses TLS."""
    if ca_pem is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)


class KVStoreClient:
    def __init__(self, address: str, token: str | None = None, ca_pem: bytes | None = None,
                 timeout_s: float = 30.0) -> None:
        self.channel = open_channel(address, ca_pem)
        self.stub = kvstore_pb2_grpc.KVStoreStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s = timeout_s

    def _call(self, method, request):
        return method(request, metadata=self.metadata, timeout=self.timeout_s)

    def register(self, namespace: str, page_bytes: int) -> Layout:
        reply = self._call(self.stub.Register, pb.RegisterRequest(
            namespace=namespace, page_bytes=page_bytes))
        return Layout(namespace, reply.arena_id, reply.arena_path, reply.slot_bytes,
                      reply.num_slots, reply.page_bytes)

    def lookup(self, namespace: str, keys: list[bytes]) -> LookupResult:
        reply = self._call(self.stub.Lookup, pb.LookupRequest(namespace=namespace, keys=keys))
        return LookupResult(reply.num_present, list(reply.tiers))

    def prepare_store(self, namespace: str, keys: list[bytes]) -> StorePlan:
        reply = self._call(self.stub.PrepareStore,
                           pb.PrepareStoreRequest(namespace=namespace, keys=keys))
        return StorePlan(reply.lease_id, [(s.key_index, s.slot) for s in reply.slots])

    def complete_store(self, lease_id: int, is_ok: bool = True) -> int:
        reply = self._call(self.stub.CompleteStore,
                           pb.CompleteStoreRequest(lease_id=lease_id, ok=is_ok))
        return reply.num_published

    def prepare_load(self, namespace: str, keys: list[bytes]) -> LoadPlan:
        reply = self._call(self.stub.PrepareLoad,
                           pb.PrepareLoadRequest(namespace=namespace, keys=keys))
        return LoadPlan(reply.lease_id, list(reply.slots))

    def complete_load(self, lease_id: int) -> int:
        reply = self._call(self.stub.CompleteLoad, pb.CompleteLoadRequest(lease_id=lease_id))
        return reply.num_unpinned

    def put_pages(self, pages: Iterable[tuple[bytes, bytes]]) -> int:
        """Send whole pages; returns how many were stored (present ones are skipped)."""
        stream = (pb.Page(key=key, data=data) for key, data in pages)
        reply = self.stub.PutPages(stream, metadata=self.metadata, timeout=self.timeout_s)
        return reply.num_stored

    def get_pages(self, keys: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """(key, bytes) of each present key, in request order; absent keys are skipped."""
        replies = self.stub.GetPages(pb.GetPagesRequest(keys=keys), metadata=self.metadata,
                                     timeout=self.timeout_s)
        for page in replies:
            yield page.key, page.data

    def stats(self) -> pb.StatsResponse:
        return self._call(self.stub.Stats, pb.StatsRequest())

    def close(self) -> None:
        self.channel.close()


def map_arena(layout: Layout) -> Arena:
    """Map the arena of a registered layout (same host only)."""
    return Arena.open(layout.arena_path, layout.slot_bytes, layout.num_slots)


def store_pages(client: KVStoreClient, arena: Arena, layout: Layout,
                pages: list[tuple[bytes, bytes]]) -> int:
    """Two-phase store of whole pages through the arena; returns how many were written."""
    plan = client.prepare_store(layout.namespace, [key for key, _ in pages])
    for key_index, slot in plan.slots:
        arena.page(slot, layout.page_bytes)[:] = pages[key_index][1]
    client.complete_store(plan.lease_id)
    return len(plan.slots)


def load_pages(client: KVStoreClient, arena: Arena, layout: Layout,
               keys: list[bytes]) -> list[bytes]:
    """Two-phase load: bytes of the leading present keys."""
    plan = client.prepare_load(layout.namespace, keys)
    try:
        return [bytes(arena.page(slot, layout.page_bytes)) for slot in plan.slots]
    finally:
        client.complete_load(plan.lease_id)
