"""strata.v1.KVStore over gRPC: each RPC converts the wire message and calls the store.

A KVStoreError becomes its gRPC status (one decorator, not a try/except per RPC); a bearer
token, when configured, is checked by one server interceptor before any KVStore method runs.
"""
import functools
import hmac

import grpc

from kvstore.errors import KVStoreError
from kvstore.store import Store, check_keys
from protos.v1 import kvstore_pb2 as pb
from protos.v1 import kvstore_pb2_grpc

SERVICE_NAME = "strata.v1.KVStore"


def _status_on_error(method):
    """Map a KVStoreError raised by `method` (unary or server-streaming) to its status."""
    @functools.wraps(method)
    def unary(self, request, context):
        try:
            return method(self, request, context)
        except KVStoreError as error:
            context.abort(error.code, str(error))
    return unary


class KVStoreService(kvstore_pb2_grpc.KVStoreServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    @_status_on_error
    def Register(self, request, context):
        result = self.store.register(request.namespace, request.page_bytes)
        return pb.RegisterResponse(**result._asdict())

    @_status_on_error
    def Lookup(self, request, context):
        tiers = self.store.lookup(request.namespace, list(request.keys))
        return pb.LookupResponse(num_present=len(tiers), tiers=[int(t) for t in tiers])

    @_status_on_error
    def PrepareStore(self, request, context):
        plan = self.store.prepare_store(request.namespace, list(request.keys))
        slots = [pb.StoreSlot(key_index=i, slot=s) for i, s in plan.slots]
        return pb.PrepareStoreResponse(lease_id=plan.lease_id, slots=slots,
                                       arena_id=self.store.arena_id(request.namespace))

    @_status_on_error
    def CompleteStore(self, request, context):
        num_published = self.store.complete_store(request.lease_id, request.ok)
        return pb.CompleteStoreResponse(num_published=num_published)

    @_status_on_error
    def PrepareLoad(self, request, context):
        plan = self.store.prepare_load(request.namespace, list(request.keys))
        return pb.PrepareLoadResponse(lease_id=plan.lease_id, slots=plan.slots,
                                      arena_id=self.store.arena_id(request.namespace))

    @_status_on_error
    def CompleteLoad(self, request, context):
        return pb.CompleteLoadResponse(num_unpinned=self.store.complete_load(request.lease_id))

    @_status_on_error
    def PutPages(self, request_iterator, context):
        pages = ((page.key, page.data) for page in request_iterator)
        num_stored, num_present = self.store.put_pages(pages)
        return pb.PutPagesResponse(num_stored=num_stored, num_present=num_present)

    @_status_on_error
    def GetPages(self, request, context):
        keys = list(request.keys)
        check_keys(keys)  # here, so a bad key is a status before the stream starts
        return (pb.Page(key=key, data=data) for key, data in self.store.get_pages(keys))

    @_status_on_error
    def Stats(self, request, context):
        stats = self.store.stats()
        return pb.StatsResponse(
            tiers=[pb.KVTierStats(tier=int(t.tier), num_pages=t.num_pages,
                                  num_bytes=t.num_bytes, capacity_bytes=t.capacity_bytes,
                                  **_counters(t.counters)) for t in stats.tiers],
            num_leases=stats.num_leases, num_expired_leases=stats.num_expired_leases,
            num_namespaces=stats.num_namespaces)


def _counters(counters) -> dict:
    return {name: getattr(counters, name) for name in counters.__slots__}


class TokenInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED unless `authorization: Bearer <token>` matches (health and reflection
    stay open so probes work without the secret)."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "missing or wrong bearer token: pass the kvstore's --token")
        self.deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self.deny_stream = grpc.stream_unary_rpc_method_handler(deny)
        self.deny_unary_stream = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        if not handler_call_details.method.startswith(f"/{SERVICE_NAME}/"):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        presented = metadata.get("authorization", "").encode()
        if hmac.compare_digest(presented, self.expected):
            return continuation(handler_call_details)
        if handler_call_details.method.endswith("/PutPages"):
            return self.deny_stream
        if handler_call_details.method.endswith("/GetPages"):
            return self.deny_unary_stream
        return self.deny_unary
