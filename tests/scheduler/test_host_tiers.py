"""The host tiers through the Scheduler, against a fake kvstore link: exact block ids, exact page
moves (block, slot, move id), exact leases and release order."""
import functools

import pytest

from bench.fake_executor import FakeExecutor
from fake_kvstore_link import LAYOUT, FakeKVStoreLink
from protos.v1 import executor_pb2
from protos.v1 import kvstore_pb2 as pb
from scheduler.block_hash import extend_keys
from scheduler.host_tiers import NullHostTiers
from scheduler.offload import KVStoreTiers, OffloadConfig
from scheduler.request import RequestStatus
from scheduler.scheduler import Scheduler, SchedulerConfig
from scheduler_builders import make_request

BLOCK = 4
PAGE_BYTES = 4096
PROMPT = list(range(1, 14))    # 13 tokens: 3 full blocks reusable (the last token is computed)


@pytest.fixture
def build():
    """build(link, num_blocks=16, **offload_config) -> (scheduler, executor); tiers closed after."""
    made = []

    def make(link, num_blocks=16, map_arena=lambda layout: True, **offload):
        config = SchedulerConfig(BLOCK, num_blocks, max_num_batched_tokens=64, max_num_seqs=8,
                                 max_model_len=256)
        offload_config = OffloadConfig(**{"num_prefetch_requests": 0, "is_always_load": True, **offload})
        scheduler = Scheduler(config, functools.partial(
            KVStoreTiers, link=link, block_size=BLOCK, page_bytes=PAGE_BYTES, map_arena=map_arena,
            config=offload_config))
        made.append(scheduler.tiers)
        return scheduler, FakeExecutor(vocab_size=512, block_size=BLOCK, num_blocks=num_blocks)

    yield make
    for tiers in made:
        tiers.close()


def keys_of(request, num_blocks):
    keys = []
    extend_keys(keys, request.namespace, request.token_ids, BLOCK, num_blocks)
    return keys


def moves(page_moves):
    assert all(move.arena_id == LAYOUT.arena_id for move in page_moves)
    return [(move.block_id, move.slot, move.move_id) for move in page_moves]


def run_step(scheduler, executor, done=(), failed=()):
    """One plan -> fake forward -> apply; done/failed: move ids the executor reports."""
    step = scheduler.plan()
    result = executor.step(step.plan)
    result.done_moves.extend(done)
    result.failed_moves.extend(failed)
    scheduler.apply(step, result)
    return step.plan


def test_ram_hit_is_a_blocking_load_and_runs_in_the_same_step(build):
    link = FakeKVStoreLink()
    request = make_request("a", PROMPT, max_tokens=1)
    keys = keys_of(request, 3)
    link.put(keys, pb.TIER_RAM)
    scheduler, executor = build(link)
    scheduler.add_request(request)
    step = scheduler.plan()
    plan = step.plan
    assert moves(plan.blocking_loads) == [(0, 100, 1), (1, 101, 2), (2, 102, 3)]
    assert list(plan.loads) == [] and list(plan.stores) == []
    (new,) = plan.new_requests   # hits in blocks 0-2, its last token in block 3
    assert (list(new.block_ids), new.num_computed_tokens, new.num_scheduled_tokens) == ([0, 1, 2, 3], 12, 1)
    assert scheduler.pool.ref_counts[:4] == [2, 2, 2, 1]   # the tiers hold the loaded blocks
    assert link.leases == {1: ("load", keys)}
    result = executor.step(plan)
    result.done_moves.extend([1, 2, 3])
    scheduler.apply(step, result)   # "a" finishes (max_tokens=1): its table goes, tail first
    assert link.leases == {} and ("complete_load", 1) in link.calls
    assert list(scheduler.pool.free_blocks) == list(range(4, 16)) + [3]
    assert list(scheduler.pool.cached_free_blocks) == [2, 1, 0]   # published, then released
    assert scheduler.pool.match_prefix(keys) == [0, 1, 2] and not scheduler.has_work
    assert scheduler.tiers.stats.num_hits[pb.TIER_RAM] == 3


def test_disk_hit_waits_in_loading_until_every_copy_is_reported(build):
    link = FakeKVStoreLink()
    request = make_request("a", PROMPT, max_tokens=1)
    link.put(keys_of(request, 3), pb.TIER_DISK)
    scheduler, executor = build(link)
    scheduler.add_request(request)
    plan = run_step(scheduler, executor, done=[1, 2])
    assert moves(plan.loads) == [(0, 100, 1), (1, 101, 2), (2, 102, 3)]
    assert list(plan.blocking_loads) == [] and list(plan.new_requests) == []
    assert plan.num_scheduled_tokens == 0 and plan.wait_for_moves_s > 0
    assert (request.status, request.block_ids, scheduler.num_loading) == (RequestStatus.LOADING, [0, 1, 2], 1)
    plan = run_step(scheduler, executor, done=[3])   # nothing new to send; the last copy lands
    assert list(plan.loads) == [] and list(plan.new_requests) == []
    assert (request.status, request.num_computed_tokens, scheduler.num_loading) == (RequestStatus.RUNNING, 12, 0)
    assert link.leases == {}
    plan = run_step(scheduler, executor)
    (new,) = plan.new_requests
    assert (list(new.block_ids), new.num_computed_tokens, new.num_scheduled_tokens) == ([0, 1, 2, 3], 12, 1)


def test_a_failed_copy_recomputes_from_that_page_on(build):
    link = FakeKVStoreLink()
    request = make_request("a", PROMPT, max_tokens=1)
    keys = keys_of(request, 3)
    link.put(keys, pb.TIER_DISK)
    scheduler, executor = build(link)
    scheduler.add_request(request)
    run_step(scheduler, executor, done=[1, 3], failed=[2])   # page 1 (block 1) failed
    assert (request.status, request.num_computed_tokens) == (RequestStatus.RUNNING, 4)
    assert scheduler.pool.match_prefix(keys) == [0]          # only the page before it is published
    assert scheduler.tiers.stats.num_hits[pb.TIER_DISK] == 1
    plan = run_step(scheduler, executor)
    (new,) = plan.new_requests
    assert (list(new.block_ids), new.num_computed_tokens, new.num_scheduled_tokens) == ([0, 1, 2, 3], 4, 9)
    # Blocks 1 and 2 were recomputed and published; the kvstore has them: PrepareStore skips both.
    plan = run_step(scheduler, executor)
    assert list(plan.stores) == [] and link.calls[-2:] == [("prepare_store", keys[1:]),
                                                           ("complete_store", (2, True))]


def test_new_full_blocks_are_stored_once_and_held_until_copied(build):
    link = FakeKVStoreLink()
    request = make_request("a", PROMPT, max_tokens=3)
    keys = keys_of(request, 3)
    link.put(keys[1:2])            # the kvstore already has the second block's page
    scheduler, executor = build(link)
    scheduler.add_request(request)
    run_step(scheduler, executor)  # computes 13 tokens: blocks 0-2 become full and are published
    plan = run_step(scheduler, executor, done=[1])
    assert link.calls == [("lookup", keys), ("prepare_store", keys)]
    assert moves(plan.stores) == [(0, 100, 1), (2, 101, 2)]   # key indexes 0 and 2 only
    assert scheduler.pool.ref_counts[:4] == [2, 1, 2, 1]       # held until the lease's last copy
    assert link.leases == {1: ("store", [keys[0], keys[2]])}
    run_step(scheduler, executor, done=[2])                    # "a" finishes with this step
    assert link.leases == {} and link.calls[-1] == ("complete_store", (1, True))
    assert set(link.pages) == set(keys) and not scheduler.has_work
    # "a" released its table tail first (block 1 reached 0 then); the store released 0, then 2.
    assert list(scheduler.pool.free_blocks) == list(range(4, 16)) + [3]
    assert list(scheduler.pool.cached_free_blocks) == [1, 0, 2]


def test_aborted_while_loading_holds_its_blocks_until_the_copies_are_reported(build):
    link = FakeKVStoreLink()
    request = make_request("a", PROMPT, max_tokens=1)
    link.put(keys_of(request, 3), pb.TIER_DISK)
    scheduler, executor = build(link)
    scheduler.add_request(request)
    run_step(scheduler, executor)
    assert scheduler.abort_request("a").request_id == "a"
    assert request.block_ids == [] and scheduler.pool.ref_counts[:3] == [1, 1, 1]
    assert scheduler.pool.num_free_blocks == 13 and scheduler.has_work   # the moves are in flight
    run_step(scheduler, executor, done=[1, 2, 3])
    assert list(scheduler.pool.free_blocks) == list(range(3, 16)) + [2, 1, 0]
    assert scheduler.pool.num_cached_blocks == 0                  # aborted: nothing published
    assert link.leases == {} and scheduler.num_loading == 0 and not scheduler.has_work


def test_preemption_puts_the_victims_unstored_blocks_at_the_head_of_the_store_queue(build):
    link = FakeKVStoreLink()
    scheduler, executor = build(link, num_blocks=6, max_store_pages_per_step=1, max_store_queue=2)
    victim = make_request("victim", range(1, 9), max_tokens=8)
    keeper = make_request("keeper", range(11, 23), max_tokens=8, priority=1)
    victim_keys, keeper_keys = keys_of(victim, 2), keys_of(keeper, 3)
    scheduler.add_request(victim)
    run_step(scheduler, executor)            # victim: blocks 0, 1 full, queued
    scheduler.add_request(keeper)
    plan = run_step(scheduler, executor, done=[1])
    assert moves(plan.stores) == [(0, 100, 1)]     # one page per step: victim block 0
    # keeper's blocks 3-5 were queued behind victim block 1: the 2-entry queue dropped 1 and 3.
    assert list(scheduler.tiers.stores.queue) == [(4, keeper_keys[1]), (5, keeper_keys[2])]
    plan = run_step(scheduler, executor)     # keeper needs a 4th block: the victim goes
    assert list(plan.finished_request_ids) == ["victim"] and scheduler.counters.num_preemptions == 1
    assert moves(plan.stores) == [(4, 101, 2)]
    assert list(plan.running[0].new_block_ids) == [2]
    # victim block 0 is stored (remembered); block 1 jumps ahead of keeper block 5.
    assert list(scheduler.tiers.stores.queue) == [(1, victim_keys[1]), (5, keeper_keys[2])]
    plan = run_step(scheduler, executor)
    assert moves(plan.stores) == [(1, 102, 3)]
    assert link.calls[-1] == ("prepare_store", [victim_keys[1]])


def test_reset_after_executor_loss_rolls_back_every_lease_and_requeues(build):
    link = FakeKVStoreLink()
    x, y, z = (make_request(name, prompt, max_tokens=4) for name, prompt in
               (("x", PROMPT), ("y", range(101, 114)), ("z", range(201, 209))))
    link.put(keys_of(x, 3) + keys_of(y, 3), pb.TIER_DISK)
    scheduler, executor = build(link)
    for request in (x, y, z):
        scheduler.add_request(request)
    plan = run_step(scheduler, executor)
    assert moves(plan.loads) == [(0, 100, 1), (1, 101, 2), (2, 102, 3),
                                 (3, 103, 4), (4, 104, 5), (5, 105, 6)]
    assert list(plan.new_requests[0].block_ids) == [6, 7]    # z computes
    scheduler.abort_request("y")
    plan = run_step(scheduler, executor)
    assert moves(plan.stores) == [(6, 106, 7), (7, 107, 8)]
    scheduler.preempt_all()   # the executor is gone with every move
    assert link.leases == {}
    assert link.calls[-3:] == [("complete_store", (3, False)), ("complete_load", 1), ("complete_load", 2)]
    # Release order: z's tail, the store's blocks, x's table, y's held table; then the index goes.
    assert list(scheduler.pool.free_blocks) == [9, 10, 11, 12, 13, 14, 15, 8, 2, 1, 0, 5, 4, 3, 6, 7]
    assert scheduler.pool.num_free_blocks == 16 and scheduler.pool.check_integrity()
    assert [(r.status, r.block_ids, r.num_preemptions) for r in (x, z)] == [(RequestStatus.WAITING, [], 1)] * 2
    assert (scheduler.num_waiting, scheduler.num_loading, scheduler.has_moves_in_flight) == (2, 0, False)
    late = executor_pb2.StepResult(done_moves=[1, 7], failed_moves=[8])
    assert scheduler.tiers.complete_moves(late) == [] and link.leases == {}   # ignored


@pytest.mark.parametrize("tiers", ["null", "kvstore down"])
def test_tiers_that_hold_nothing_change_no_plan(tiers, build):
    """The contract every implementation keeps: with nothing in the host tiers (no kvstore, or one
    not attached yet) the plans are the device prefix cache's alone."""
    link = FakeKVStoreLink()
    link.registered = None
    if tiers == "null":
        config = SchedulerConfig(BLOCK, 16, 64, 8, 256)
        scheduler = Scheduler(config, NullHostTiers)
        executor = FakeExecutor(vocab_size=512, block_size=BLOCK, num_blocks=16)
    else:
        scheduler, executor = build(link)
    scheduler.add_request(make_request("a", PROMPT, max_tokens=2))
    plans = [run_step(scheduler, executor)]
    scheduler.add_request(make_request("b", PROMPT, max_tokens=2))   # a device prefix hit
    plans += [run_step(scheduler, executor) for _ in range(2)]
    assert [[(list(r.block_ids), r.num_computed_tokens) for r in p.new_requests] for p in plans] == \
        [[([0, 1, 2, 3], 0)], [([0, 1, 2, 4], 12)], []]
    assert all(not (p.loads or p.stores or p.blocking_loads or p.wait_for_moves_s) for p in plans)
    assert not scheduler.has_work and link.calls == []


def test_an_executor_that_cannot_map_the_arena_keeps_the_kvstore_down(build):
    link = FakeKVStoreLink()
    mapped = []
    scheduler, executor = build(link, map_arena=lambda layout: mapped.append(layout) or len(mapped) == 1)
    run_step(scheduler, executor)
    assert link.is_up and mapped == [LAYOUT]
    scheduler.tiers.remap_arena()     # a restarted executor refuses the mapping
    assert not link.is_up and link.calls[-1][0] == "mark_down"
