"""strata.v1.KVStore over gRPC: each RPC converts the wire message and calls the store.

A KVStoreError (a runtime StatusError) becomes its gRPC status in the runtime's one interceptor,
for the streaming RPCs too; a bearer token, when configured, is checked by the runtime's token
interceptor before any KVStore method runs.
"""
from kvstore.metrics import make_registry, metrics_text
from kvstore.store import Store, check_keys
from protos.v1 import kvstore_pb2 as pb
from protos.v1 import kvstore_pb2_grpc

SERVICE_NAME = "strata.v1.KVStore"


class KVStoreService(kvstore_pb2_grpc.KVStoreServicer):
    def __init__(self, store: Store) -> None:
        self.store = store
        self.metrics = make_registry(store)

    def Register(self, request, context):
        result = self.store.register(request.namespace, request.page_bytes)
        return pb.RegisterResponse(**result._asdict())

    def Lookup(self, request, context):
        tiers = self.store.lookup(request.namespace, list(request.keys))
        return pb.LookupResponse(num_present=len(tiers), tiers=[int(t) for t in tiers])

    def PrepareStore(self, request, context):
        plan = self.store.prepare_store(request.namespace, list(request.keys))
        slots = [pb.StoreSlot(key_index=i, slot=s) for i, s in plan.slots]
        return pb.PrepareStoreResponse(lease_id=plan.lease_id, slots=slots,
                                       arena_id=self.store.arena_id(request.namespace))

    def CompleteStore(self, request, context):
        num_published = self.store.complete_store(request.lease_id, request.ok)
        return pb.CompleteStoreResponse(num_published=num_published)

    def PrepareLoad(self, request, context):
        plan = self.store.prepare_load(request.namespace, list(request.keys))
        return pb.PrepareLoadResponse(lease_id=plan.lease_id, slots=plan.slots,
                                      arena_id=self.store.arena_id(request.namespace))

    def CompleteLoad(self, request, context):
        return pb.CompleteLoadResponse(num_unpinned=self.store.complete_load(request.lease_id))

    def PutPages(self, request_iterator, context):
        pages = ((page.key, page.data) for page in request_iterator)
        num_stored, num_present = self.store.put_pages(pages)
        return pb.PutPagesResponse(num_stored=num_stored, num_present=num_present)

    def GetPages(self, request, context):
        keys = list(request.keys)
        check_keys(keys)  # here, so a bad key is a status before the stream starts
        return (pb.Page(key=key, data=data) for key, data in self.store.get_pages(keys))

    def Stats(self, request, context):
        stats = self.store.stats()
        return pb.StatsResponse(
            tiers=[pb.KVTierStats(tier=int(t.tier), num_pages=t.num_pages,
                                  num_bytes=t.num_bytes, capacity_bytes=t.capacity_bytes,
                                  **_counters(t.counters)) for t in stats.tiers],
            num_leases=stats.num_leases, num_expired_leases=stats.num_expired_leases,
            num_namespaces=stats.num_namespaces)


    def GetMetrics(self, request, context):
        return pb.KVMetricsResponse(text=metrics_text(self.metrics))


def _counters(counters) -> dict:
    return {name: getattr(counters, name) for name in counters.__slots__}
