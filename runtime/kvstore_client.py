"""The typed synchronous client of strata.v1.KVStore (the scheduler's link, a kvstore talking to
its backing, tests, bench). Ids cross the wire; page bytes only in put_pages/get_pages. Replies
are NamedTuples; a failed call raises grpc.RpcError with the store's status and message."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import grpc

from protos.v1 import kvstore_pb2 as pb
from protos.v1 import kvstore_pb2_grpc
from runtime.listen import MESSAGE_OPTIONS
from runtime.token import bearer_metadata


class ArenaLayout(NamedTuple):
    """A registered namespace: its pages live in the shared-memory arena `arena_id`."""
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
    arena_id: str | None = None   # the arena the slots are in (None in the store's own plans)


class LoadPlan(NamedTuple):
    lease_id: int
    slots: list[int]  # slot of each leading present key
    arena_id: str | None = None   # the arena the slots are in (None in the store's own plans)


def open_channel(address: str, ca_pem: bytes | None = None,
                 options: Sequence[tuple] = ()) -> grpc.Channel:
    """`address` is host:port or unix:/path. With `ca_pem` the channel uses TLS."""
    options = [*MESSAGE_OPTIONS, *options]
    if ca_pem is None:
        return grpc.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.secure_channel(address, credentials, options=options)


class KVStoreClient:
    """`token`: the store's bearer token; `ca_pem`: TLS; `options`: more channel options."""

    def __init__(self, address: str, token: str | None = None, ca_pem: bytes | None = None,
                 timeout_s: float = 30.0, options: Sequence[tuple] = ()) -> None:
        self.channel = open_channel(address, ca_pem, options)
        self.stub = kvstore_pb2_grpc.KVStoreStub(self.channel)
        self.metadata = bearer_metadata(token)
        self.timeout_s = timeout_s

    def _call(self, method, request, timeout_s: float | None = None):
        return method(request, metadata=self.metadata, timeout=timeout_s or self.timeout_s)

    def register(self, namespace: str, page_bytes: int) -> ArenaLayout:
        reply = self._call(self.stub.Register, pb.RegisterRequest(
            namespace=namespace, page_bytes=page_bytes))
        return ArenaLayout(namespace, reply.arena_id, reply.arena_path, reply.slot_bytes,
                           reply.num_slots, reply.page_bytes)

    def lookup(self, namespace: str, keys: list[bytes]) -> LookupResult:
        reply = self._call(self.stub.Lookup, pb.LookupRequest(namespace=namespace, keys=keys))
        return LookupResult(reply.num_present, list(reply.tiers))

    def prepare_store(self, namespace: str, keys: list[bytes]) -> StorePlan:
        reply = self._call(self.stub.PrepareStore,
                           pb.PrepareStoreRequest(namespace=namespace, keys=keys))
        return StorePlan(reply.lease_id, [(s.key_index, s.slot) for s in reply.slots],
                         reply.arena_id)

    def complete_store(self, lease_id: int, is_ok: bool = True) -> int:
        reply = self._call(self.stub.CompleteStore,
                           pb.CompleteStoreRequest(lease_id=lease_id, ok=is_ok))
        return reply.num_published

    def prepare_load(self, namespace: str, keys: list[bytes]) -> LoadPlan:
        reply = self._call(self.stub.PrepareLoad,
                           pb.PrepareLoadRequest(namespace=namespace, keys=keys))
        return LoadPlan(reply.lease_id, list(reply.slots), reply.arena_id)

    def complete_load(self, lease_id: int) -> int:
        reply = self._call(self.stub.CompleteLoad, pb.CompleteLoadRequest(lease_id=lease_id))
        return reply.num_unpinned

    def put_pages(self, pages: Iterable[tuple[bytes, bytes]]) -> int:
        """Send whole pages; returns how many were stored (present ones are skipped)."""
        stream = (pb.Page(key=key, data=data) for key, data in pages)
        return self._call(self.stub.PutPages, stream).num_stored

    def get_pages(self, keys: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """(key, bytes) of each present key, in request order; absent keys are skipped."""
        for page in self._call(self.stub.GetPages, pb.GetPagesRequest(keys=keys)):
            yield page.key, page.data

    def stats(self, timeout_s: float | None = None) -> pb.StatsResponse:
        return self._call(self.stub.Stats, pb.StatsRequest(), timeout_s)

    def metrics(self, timeout_s: float | None = None) -> str:
        """The store's Prometheus text (format 0.0.4)."""
        return self._call(self.stub.GetMetrics, pb.KVMetricsRequest(), timeout_s).text

    def close(self) -> None:
        self.channel.close()
