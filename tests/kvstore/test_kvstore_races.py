"""Race tests, each named after the race it provokes (threads against one in-process store)."""
import threading

import pytest

from bench.kvstore_pages import key_of, page_of
from kvstore.arena_io import map_arena
from kvstore.store import Store, StoreConfig
from kvstore_harness import PAGE, uid
from runtime.kvstore_client import KVStoreClient


def run_threads(target, num_threads: int) -> list:
    errors = []

    def guarded(index):
        try:
            target(index)
        except Exception as error:  # collected and asserted below
            errors.append(error)
    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(num_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


@pytest.mark.parametrize("tier", ["ram", "ram+nvme"])
def test_race_two_clients_prepare_the_same_key_only_one_gets_a_slot(make, tier):
    kv = make(tier, num_slots=16)
    key = key_of(uid("contended"))
    plans = []
    barrier = threading.Barrier(4)

    def prepare(_):
        barrier.wait()
        plans.append(kv.client.prepare_store("model-a", [key]))
    assert run_threads(prepare, 4) == []
    winners = [plan for plan in plans if plan.slots]
    assert len(winners) == 1
    kv.arena.page(winners[0].slots[0][1], PAGE)[:] = page_of(key, PAGE)
    for plan in plans:
        kv.client.complete_store(plan.lease_id)
    assert kv.client.lookup("model-a", [key]).num_present == 1


@pytest.mark.parametrize("tier", ["ram", "ram+nvme", "ram+remote", "ram+redis"])
def test_race_loads_during_eviction_pressure_never_see_another_pages_bytes(make, tier):
    kv = make(tier, num_slots=6)
    names = [uid(i) for i in range(12)]

    def churn(worker):
        for round_index in range(15):
            name = names[(worker * 5 + round_index) % len(names)]
            key = key_of(name)
            plan = kv.client.prepare_store("model-a", [key])
            for _, slot in plan.slots:
                kv.arena.page(slot, PAGE)[:] = page_of(key, PAGE)
            kv.client.complete_store(plan.lease_id)
            load = kv.client.prepare_load("model-a", [key])
            for slot in load.slots:
                assert bytes(kv.arena.page(slot, PAGE)) == page_of(key, PAGE), name
            kv.client.complete_load(load.lease_id)
    errors = run_threads(churn, 3)
    assert all("RESOURCE_EXHAUSTED" in str(e) for e in errors), errors  # backpressure only
    kv.store.check_integrity()


def test_race_lookup_while_a_page_is_half_written_sees_nothing(make):
    kv = make("ram")
    key = key_of(uid("torn"))
    plan = kv.client.prepare_store("model-a", [key])
    seen = []
    stop = threading.Event()

    def poll(_):
        while not stop.is_set():
            seen.append(kv.client.lookup("model-a", [key]).num_present)
    poller = threading.Thread(target=poll, args=(0,))
    poller.start()
    view = kv.arena.page(plan.slots[0][1], PAGE)
    for offset in range(0, PAGE, 512):  # write slowly, in pieces
        view[offset:offset + 512] = page_of(key, PAGE)[offset:offset + 512]
    stop.set()
    poller.join()
    assert set(seen) <= {0} and seen
    kv.client.complete_store(plan.lease_id)
    assert kv.client.lookup("model-a", [key]).num_present == 1


def test_race_lease_expires_while_the_client_completes_it(make):
    """Completing right around the TTL either unpins (1) or is NOT_FOUND: never both, never a
    leaked pin."""
    import time
    import grpc
    kv = make("ram", lease_ttl_s=0.05)
    name = uid("x")
    kv.put(name)
    outcomes = set()
    for attempt in range(20):
        lease = kv.client.prepare_load("model-a", [key_of(name)])
        time.sleep(0.03 + 0.002 * attempt)
        try:
            outcomes.add(kv.client.complete_load(lease.lease_id))
        except grpc.RpcError as error:
            outcomes.add(error.code())
    time.sleep(0.2)
    assert outcomes <= {1, grpc.StatusCode.NOT_FOUND} and outcomes
    kv.store.check_integrity()
    assert kv.store.index.get(key_of(name)).num_pins == 0
