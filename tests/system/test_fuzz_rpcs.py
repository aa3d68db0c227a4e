"""Generated messages (proto_strategies.py) sent to every RPC of the three daemons, real processes.

Property of each call: OK, or a status the daemon documents for bad input (never INTERNAL,
UNKNOWN or UNAVAILABLE; DEADLINE_EXCEEDED / CANCELLED only where the test set a deadline or
cancelled). Property of the daemon afterwards: it serves exactly what it served before the
fuzzing (the same greedy tokens, the same page bytes) and holds nothing the fuzzing left behind.

Each daemon starts once per test; Hypothesis runs derandomized with a bounded number of
examples so CI is reproducible and the file takes about a minute.
"""
import collections
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protos
from bench.kvstore_pages import key_of, page_of
from bench.kvstore_process import start_daemon
from bench.step_plans import SimpleDriver
from kvstore.arena_io import load_pages, map_arena, store_pages
from proto_strategies import calls, field_values, messages
from protos.v1 import (common_pb2, executor_pb2, executor_pb2_grpc, generation_pb2, kvstore_pb2,
                       kvstore_pb2_grpc)
from internal_token import TOKEN, TOKEN_FILE
from runtime.arenas import arena_file_name, new_arena_tag
from runtime.kvstore_client import KVStoreClient
from runtime.token import with_token
from servers import EXACT_DTYPE, STRATA, child_env, logs, start_daemons, stop_processes, wait_ready

pytestmark = pytest.mark.system
Code = grpc.StatusCode


def fuzz_settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def widened(full_name: str, plausible: st.SearchStrategy) -> st.SearchStrategy:
    """A field's arbitrary values, or values that pass validation (so calls also reach past it)."""
    return st.one_of(field_values(full_name), plausible)


def weighted(choices: list[tuple[st.SearchStrategy, int]]) -> st.SearchStrategy:
    """One of the strategies, each drawn `weight` times as often as a strategy of weight 1."""
    return st.sampled_from([s for s, weight in choices for _ in range(weight)]).flatmap(lambda s: s)


def status_of(call, *args, **kwargs) -> Code:
    try:
        call(*args, **kwargs)
        return Code.OK
    except grpc.RpcError as error:
        return error.code()


def invoke(stub, service, name: str, request, timeout_s: float) -> Code:
    """One RPC of any shape; a response stream is read to its end."""
    method, rpc = service.methods_by_name[name], getattr(stub, name)
    if method.client_streaming:
        return status_of(rpc, iter(request), timeout=timeout_s)
    if method.server_streaming:
        return status_of(lambda: collections.deque(rpc(request, timeout=timeout_s), maxlen=0))
    return status_of(rpc, request, timeout=timeout_s)


def print_statuses(seen: collections.Counter) -> None:
    counts = sorted((method, code.name, n) for (method, code), n in seen.items())
    print("\nstatuses seen:", ", ".join(f"{method} {code} x{n}" for method, code, n in counts))


# ---- strata.v1.Generation through scheduler + executor + kvstore ------------------------------

GENERATION = generation_pb2.DESCRIPTOR.services_by_name["Generation"]
GENERATION_STATUSES = {Code.OK, Code.INVALID_ARGUMENT, Code.ALREADY_EXISTS, Code.RESOURCE_EXHAUSTED}
BLOCK_SIZE = 4
VOCAB_SIZE = 512
FIXED_PROMPT = list(range(3, 40))
SHARED_PREFIXES = [[], list(range(100, 116)), list(range(200, 224)), FIXED_PROMPT[:16]]


def plausible_generation_fields() -> dict:
    """Values that pass the API's validation, field by field (an empty prompt aside)."""
    token = st.integers(0, VOCAB_SIZE - 1)
    name = "strata.v1."
    return {
        name + "GenerateRequest.request_id": st.sampled_from(["", "a", "b"]),
        name + "GenerateRequest.text": st.sampled_from(["def main():", "x = 1\n", "é🙂"]),
        name + "GenerateRequest.cache_salt": st.sampled_from(["", "salt"]),
        # Shared prefixes: their pages are offloaded, evicted from the small pool, loaded back.
        name + "TokenIds.ids": st.builds(lambda prefix, suffix: prefix + suffix,
                                         st.sampled_from(SHARED_PREFIXES), st.lists(token, max_size=12)),
        name + "StoppingCriteria.max_tokens": st.integers(1, 24),
        name + "StoppingCriteria.min_tokens": st.integers(0, 4),
        name + "StoppingCriteria.stop_token_ids": st.lists(token, max_size=3),
        name + "StoppingCriteria.stop": st.lists(st.text(min_size=1, max_size=4), max_size=2),
        name + "SamplingParams.temperature": st.floats(0, 2),
        name + "SamplingParams.top_p": st.floats(0, 1, exclude_min=True),
        name + "SamplingParams.top_k": st.integers(0, 600),
        name + "SamplingParams.min_p": st.floats(0, 1),
        name + "SamplingParams.repetition_penalty": st.floats(0.1, 3),
        name + "SamplingParams.presence_penalty": st.floats(-2, 2),
        name + "SamplingParams.frequency_penalty": st.floats(-2, 2),
        name + "SamplingParams.logprobs": st.integers(0, 20),
    }


def generation_calls() -> st.SearchStrategy:
    """(name, request, mutation): every RPC with arbitrary or plausible fields, and Generate with
    plausible fields only. A mutation (position, byte) overwrites one byte of the serialized
    request: the server must refuse what it cannot decode (bytes that are not UTF-8 in a string
    field, a broken length) with INVALID_ARGUMENT, as runtime/decoding.py documents."""
    plausible = plausible_generation_fields()
    widened_fields = {name: widened(name, values) for name, values in plausible.items()}
    request = st.one_of(calls(GENERATION, widened_fields),
                        st.tuples(st.just("Generate"), messages(generation_pb2.GenerateRequest, plausible)
                                  .filter(lambda request: request.WhichOneof("input"))))
    mutation = weighted([(st.none(), 3), (st.tuples(st.integers(0, 2**16), st.integers(0, 255)), 1)])
    return st.builds(lambda call, change: (*call, change), request, mutation)


def wire_bytes(request, mutation: tuple[int, int] | None) -> bytes:
    data = request.SerializeToString()
    if mutation is None or not data:
        return data
    position, byte = mutation[0] % len(data), mutation[1]
    return data[:position] + bytes([byte]) + data[position + 1:]


def call_generation(channel, name: str, data: bytes, num_read: int | None, timeout_s: float) -> Code:
    """One call with serialized bytes; a Generate stream is read num_read responses deep, then
    cancelled (None: to its end)."""
    path = f"/{GENERATION.full_name}/{name}"
    if name != "Generate":
        return status_of(channel.unary_unary(path), data, timeout=10)
    call = channel.unary_stream(path)(data, timeout=timeout_s)
    try:
        collections.deque(itertools.islice(call, num_read), maxlen=0)
    except grpc.RpcError as error:
        return error.code()
    call.cancel()   # a no-op on a finished call
    return call.code()


def greedy_tokens(stub) -> list[int]:
    request = generation_pb2.GenerateRequest(
        tokens=generation_pb2.TokenIds(ids=FIXED_PROMPT), sampling=common_pb2.SamplingParams(temperature=0.0),
        stopping=generation_pb2.StoppingCriteria(max_tokens=12, ignore_eos=True))
    return [token for response in stub.Generate(request, timeout=60) for token in response.token_ids]


def idle_stats(stub, num_free_device_blocks: int | None = None, timeout_s: float = 30):
    """Stats once nothing runs, waits or loads (and, if given, that many blocks are free)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = stub.GetStats(generation_pb2.GetStatsRequest(), timeout=10)
        is_idle = stats.num_running == stats.num_waiting == stats.num_loading == 0
        if is_idle and num_free_device_blocks in (None, stats.num_free_device_blocks):
            time.sleep(0.7)   # the engine checks the pool's integrity once it is idle
            return stub.GetStats(generation_pb2.GetStatsRequest(), timeout=10)
        assert time.monotonic() < deadline, f"not idle after {timeout_s}s: {stats}"
        time.sleep(0.1)


def test_generation_rpcs_answer_a_documented_status_and_serve_the_same_tokens(llama_dir):
    with start_daemons(llama_dir, num_device_blocks=32, block_size=BLOCK_SIZE,
                       kvstore_args=("--ram", "2MiB"),
                       scheduler_args=("--load-policy", "always", "--max-waiting", "2")) as server:
        stub = server.stub
        expected = greedy_tokens(stub)
        before = idle_stats(stub)
        seen = collections.Counter()
        call = st.tuples(generation_calls(),
                         st.one_of(st.none(), st.integers(0, 3)), st.sampled_from([0.2, 1.0, 5.0]))

        def run(name_request_mutation, num_read, timeout_s) -> None:
            name, request, mutation = name_request_mutation
            code = call_generation(server.channel, name, wire_bytes(request, mutation), num_read, timeout_s)
            seen[name, code] += 1
            allowed = GENERATION_STATUSES | ({Code.DEADLINE_EXCEEDED} if name == "Generate" else set()) | (
                {Code.CANCELLED} if name == "Generate" and num_read is not None else set())
            assert code in allowed, (name, code, request, mutation)

        with ThreadPoolExecutor(3) as pool:
            @fuzz_settings(max_examples=250)
            @given(st.lists(call, min_size=1, max_size=3))
            def fuzz(concurrent_calls):
                for future in [pool.submit(run, *c) for c in concurrent_calls]:
                    future.result()
            fuzz()
        print_statuses(seen)
        after = idle_stats(stub, before.num_free_device_blocks)
        assert after.is_integrity_ok and after.num_free_device_blocks == before.num_free_device_blocks
        assert greedy_tokens(stub) == expected and greedy_tokens(stub) == expected
        assert all(process.poll() is None for process in server.processes), logs(server.run_dir)


# ---- strata.v1.Executor alone (no scheduler: a peer that may send plans may change its KV) ----

EXECUTOR = executor_pb2.DESCRIPTOR.services_by_name["Executor"]
EXECUTOR_STATUSES = {"Describe": {Code.OK}, "Reset": {Code.OK},
                     "Step": {Code.OK, Code.INVALID_ARGUMENT},
                     "MapArena": {Code.OK, Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION}}
NUM_BLOCKS = 32
ARENA_ID, NUM_ARENA_SLOTS, SLOT_BYTES = "fuzz-arena", 8, 4096
ARENA_FILE = arena_file_name(new_arena_tag(os.getpid()), SLOT_BYTES)   # as the kvstore names one
REQUEST_IDS = ["a", "b", "c"]
GREEDY_PROMPT = [5, 17, 99, 300, 2, 45, 7]
REPOSITORY = str(Path(protos.__file__).resolve().parent.parent)   # the code this test imported


@pytest.fixture(scope="module")
def executor(llama_dir):
    """(stub, process, run dir, channel) of an executor whose working directory is its run dir, so a
    relative MapArena path names nothing of the repository. The run dir holds an arena file."""
    run_dir = Path(tempfile.mkdtemp(prefix="st"))
    (run_dir / ARENA_FILE).write_bytes(bytes(NUM_ARENA_SLOTS * SLOT_BYTES))
    address = f"unix:{run_dir / 'executor.sock'}"
    command = [*STRATA, "executor", "--model", str(llama_dir), "--listen", address,
               "--block-size", str(BLOCK_SIZE), "--num-device-blocks", str(NUM_BLOCKS),
               "--max-num-batched-tokens", "64", "--max-num-seqs", "4", "--num-threads", "1",
               "--data-dir", str(run_dir / "data"), *EXACT_DTYPE,
               "--token-file", TOKEN_FILE, "--arena-dir", str(run_dir)]
    env = dict(child_env(), PYTHONPATH=os.pathsep.join([REPOSITORY, os.environ.get("PYTHONPATH", "")]))
    with open(run_dir / "executor.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=run_dir, start_new_session=True)
    try:
        channel = wait_ready(address, [process], run_dir, service="strata.v1.Executor")
        yield executor_pb2_grpc.ExecutorStub(with_token(channel, TOKEN)), process, run_dir, channel
        channel.close()
    finally:
        stop_processes([process], grace_s=10)
        shutil.rmtree(run_dir, ignore_errors=True)


def plausible_fields(run_dir: Path) -> dict:
    """Values that pass the executor's checks, field by field (request ids it may hold, blocks
    of its pool, slots of the arena mapped as ARENA_ID)."""
    name = "strata.v1."
    request_id, count = st.sampled_from(REQUEST_IDS), st.integers(0, 12)
    tokens, blocks = st.integers(0, VOCAB_SIZE - 1), st.lists(st.integers(0, NUM_BLOCKS - 1), max_size=4)
    return {
        name + "StepPlan.finished_request_ids": st.lists(request_id, max_size=2),
        # Arbitrary waits in a third of the plans with valid moves too: inf once failed the step.
        name + "StepPlan.wait_for_moves_s": weighted([
            (st.sampled_from([0.0, 0.01]), 2), (field_values(name + "StepPlan.wait_for_moves_s"), 1)]),
        name + "NewRequest.request_id": request_id, name + "RunningRequest.request_id": request_id,
        name + "NewRequest.prompt_token_ids": st.lists(tokens, min_size=1, max_size=12),
        name + "NewRequest.output_token_ids": st.lists(tokens, max_size=3),
        name + "NewRequest.block_ids": blocks, name + "RunningRequest.new_block_ids": blocks,
        name + "NewRequest.num_computed_tokens": count, name + "NewRequest.num_scheduled_tokens": count,
        name + "RunningRequest.num_computed_tokens": count,
        name + "RunningRequest.num_scheduled_tokens": count,
        name + "SamplingParams.temperature": st.sampled_from([0.0, 0.7, 1.0]),
        name + "SamplingParams.top_p": st.floats(0, 1, exclude_min=True),
        name + "SamplingParams.min_p": st.floats(0, 1),
        name + "SamplingParams.top_k": st.integers(0, 600),
        name + "SamplingParams.repetition_penalty": st.floats(0.1, 3),
        name + "SamplingParams.logprobs": st.integers(0, 20),
        name + "PageMove.arena_id": st.just(ARENA_ID),
        name + "PageMove.block_id": st.integers(0, NUM_BLOCKS - 1),
        name + "PageMove.slot": st.integers(0, NUM_ARENA_SLOTS - 1),
        name + "PageMove.move_id": st.integers(0, 8),
        name + "MapArenaRequest.arena_id": st.just(ARENA_ID),
        name + "MapArenaRequest.arena_path": st.sampled_from(
            [str(run_dir / ARENA_FILE), ARENA_FILE, "missing", str(run_dir), "/dev/null"]),
        name + "MapArenaRequest.slot_bytes": st.just(SLOT_BYTES),
        name + "MapArenaRequest.num_slots": st.just(NUM_ARENA_SLOTS),
    }


@dataclass(slots=True)
class Held:
    num_computed: int
    num_known: int
    num_blocks: int


class Mirror:
    """What the executor holds, followed from the plans it accepted, so the fuzz can also send
    plans that continue its requests (their num_computed_tokens must match)."""

    def __init__(self) -> None:
        self.held: dict[str, Held] = {}

    def apply(self, name: str, request, result) -> None:
        if name == "Reset":
            self.held.clear()
        if name != "Step":
            return
        for request_id in request.finished_request_ids:
            self.held.pop(request_id, None)
        for new in request.new_requests:
            self.held[new.request_id] = Held(new.num_computed_tokens + new.num_scheduled_tokens,
                                             len(new.prompt_token_ids) + len(new.output_token_ids),
                                             len(new.block_ids))
        for running in request.running:
            held = self.held[running.request_id]
            held.num_computed += running.num_scheduled_tokens
            held.num_blocks += len(running.new_block_ids)
        for sampled in result.sampled:
            self.held[sampled.request_id].num_known += 1


@st.composite
def fresh_requests(draw, sampling: st.SearchStrategy) -> list[executor_pb2.NewRequest]:
    """New requests whose counts and block tables agree (the plan finishes their ids first)."""
    requests = []
    for request_id in draw(st.lists(st.sampled_from(REQUEST_IDS), unique=True, max_size=3)):
        prompt = draw(st.lists(st.integers(0, VOCAB_SIZE - 1), min_size=1, max_size=12))
        output = draw(st.lists(st.integers(0, VOCAB_SIZE - 1), max_size=3))
        num_known = len(prompt) + len(output)
        num_computed = draw(st.integers(0, num_known - 1))
        num_scheduled = draw(st.integers(0, num_known - num_computed))
        num_blocks = -(-(num_computed + num_scheduled) // BLOCK_SIZE)
        requests.append(executor_pb2.NewRequest(
            request_id=request_id, prompt_token_ids=prompt, output_token_ids=output,
            sampling=draw(sampling), num_computed_tokens=num_computed, num_scheduled_tokens=num_scheduled,
            block_ids=draw(st.lists(st.integers(0, NUM_BLOCKS - 1), min_size=num_blocks,
                                    max_size=num_blocks + 1))))
    return requests


@st.composite
def continuing_requests(draw, mirror: Mirror) -> list[executor_pb2.RunningRequest]:
    """Running requests for some of the held ones, their counts as the executor has them."""
    requests, held = [], mirror.held
    for request_id in draw(st.lists(st.sampled_from(sorted(held)), unique=True)) if held else ():
        state = held[request_id]
        num_scheduled = draw(st.integers(0, state.num_known - state.num_computed))
        num_blocks = max(0, -(-(state.num_computed + num_scheduled) // BLOCK_SIZE) - state.num_blocks)
        requests.append(executor_pb2.RunningRequest(
            request_id=request_id, num_computed_tokens=state.num_computed,
            num_scheduled_tokens=num_scheduled,
            new_block_ids=draw(st.lists(st.integers(0, NUM_BLOCKS - 1), min_size=num_blocks,
                                        max_size=num_blocks + 1))))
    return requests


def with_true_total(plan: executor_pb2.StepPlan) -> executor_pb2.StepPlan:
    """The plan with num_scheduled_tokens the sum over its requests (mod 2**32 as on the wire)."""
    total = sum(r.num_scheduled_tokens for r in (*plan.new_requests, *plan.running))
    plan.num_scheduled_tokens = total % 2**32
    return plan


def with_unique_move_ids(move_ids: Iterator[int]) -> Callable:
    def renumber(plan: executor_pb2.StepPlan) -> executor_pb2.StepPlan:
        for move in (*plan.loads, *plan.stores, *plan.blocking_loads):
            move.move_id = next(move_ids)
        return plan
    return renumber


def executor_calls(run_dir: Path, mirror: Mirror) -> st.SearchStrategy:
    """Any RPC with arbitrary or plausible fields; plans that start fresh requests or continue
    the held ones; MapArena with plausible fields."""
    name = "strata.v1."
    plausible = plausible_fields(run_dir)
    widened_fields = {field: widened(field, values) for field, values in plausible.items()}
    sampling = messages(common_pb2.SamplingParams, plausible)
    unique_move_ids = with_unique_move_ids(itertools.count(1))
    fresh = messages(executor_pb2.StepPlan, {
        **plausible, name + "StepPlan.finished_request_ids": st.just(REQUEST_IDS),
        name + "StepPlan.new_requests": fresh_requests(sampling),
        name + "StepPlan.running": st.just([])})
    continuing = messages(executor_pb2.StepPlan, {
        **plausible, name + "StepPlan.finished_request_ids": st.just([]),
        name + "StepPlan.new_requests": st.just([]),
        name + "StepPlan.running": continuing_requests(mirror)})
    plans = st.one_of(messages(executor_pb2.StepPlan, widened_fields),
                      *(plan.map(unique_move_ids) for plan in (fresh, continuing, continuing)))
    steps = st.tuples(st.just("Step"), plans.map(with_true_total))
    map_arena_calls = st.tuples(st.just("MapArena"), messages(executor_pb2.MapArenaRequest, plausible))
    return weighted([(calls(EXECUTOR, widened_fields), 1), (steps, 3), (map_arena_calls, 1)])


def greedy_driver_tokens(stub) -> list[int]:
    """Reset, then one request computed by a fixed sequence of valid plans."""
    stub.Reset(executor_pb2.ResetRequest(), timeout=30)
    driver = SimpleDriver(BLOCK_SIZE)
    driver.add("greedy", GREEDY_PROMPT)
    for _ in range(8):
        driver.apply(stub.Step(driver.plan(), timeout=30))
    return driver.outputs["greedy"]


def test_executor_rpcs_answer_a_documented_status_and_compute_the_same_tokens(executor):
    stub, process, run_dir, _ = executor
    arena = executor_pb2.MapArenaRequest(arena_id=ARENA_ID, arena_path=str(run_dir / ARENA_FILE),
                                         slot_bytes=SLOT_BYTES, num_slots=NUM_ARENA_SLOTS)
    stub.MapArena(arena, timeout=30)
    expected, description = greedy_driver_tokens(stub), stub.Describe(executor_pb2.DescribeRequest())
    seen, mirror = collections.Counter(), Mirror()
    executor_call = executor_calls(run_dir, mirror)

    @fuzz_settings(max_examples=300)
    @given(st.data())
    def fuzz(data):
        # Each example starts from the same state, so that Hypothesis can replay and shrink it.
        stub.Reset(executor_pb2.ResetRequest(), timeout=30)
        stub.MapArena(arena, timeout=30)
        mirror.held.clear()
        for _ in range(data.draw(st.integers(1, 4), label="number of calls")):
            name, request = data.draw(executor_call)
            rpc = getattr(stub, name)
            try:
                mirror.apply(name, request, rpc(request, timeout=30))
                code = Code.OK
            except grpc.RpcError as error:
                code = error.code()
            seen[name, code] += 1
            assert code in EXECUTOR_STATUSES[name], (name, code, request)
            assert process.poll() is None, logs(run_dir)
    fuzz()
    print_statuses(seen)
    assert stub.Describe(executor_pb2.DescribeRequest()) == description
    assert greedy_driver_tokens(stub) == expected
    assert process.poll() is None


def test_map_arena_refuses_a_file_no_kvstore_announced(executor):
    stub, _, run_dir, _ = executor
    decoy = run_dir / "notes.txt"
    decoy.write_bytes(b"not an arena\n" * 1000)
    request = executor_pb2.MapArenaRequest(arena_id="decoy", arena_path=str(decoy), slot_bytes=SLOT_BYTES,
                                           num_slots=3)
    assert status_of(stub.MapArena, request, timeout=30) == Code.FAILED_PRECONDITION


# ---- strata.v1.KVStore --------------------------------------------------------------------------

KVSTORE = kvstore_pb2.DESCRIPTOR.services_by_name["KVStore"]
KVSTORE_STATUSES = {Code.OK, Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.NOT_FOUND,
                    Code.RESOURCE_EXHAUSTED}
PAGE_BYTES = 4096
NAMESPACE = "fuzz-model"
LEASE_TTL_S = 1.0


def kvstore_fields() -> dict:
    """Values that pass the kvstore's checks, field by field. The keys are never those of the
    pages the test checks (a key names its bytes: PutPages of a known key with other bytes
    would be the caller's fault, not the store's)."""
    name = "strata.v1."
    keys = st.lists(st.one_of(st.sampled_from([key_of(f"fuzz-{i}") for i in range(6)]),
                              st.binary(min_size=32, max_size=32)), max_size=5)
    namespace = st.sampled_from([NAMESPACE, "other-model", ""])
    return {
        name + "RegisterRequest.namespace": namespace,
        name + "RegisterRequest.page_bytes": st.sampled_from([PAGE_BYTES, PAGE_BYTES, 1, 100, 4097, 65536]),
        name + "LookupRequest.namespace": namespace, name + "LookupRequest.keys": keys,
        name + "PrepareStoreRequest.namespace": namespace, name + "PrepareStoreRequest.keys": keys,
        name + "PrepareLoadRequest.namespace": namespace, name + "PrepareLoadRequest.keys": keys,
        name + "GetPagesRequest.keys": keys,
        name + "CompleteStoreRequest.lease_id": st.integers(1, 40),
        name + "CompleteLoadRequest.lease_id": st.integers(1, 40),
        name + "Page.key": st.sampled_from([key_of(f"fuzz-{i}") for i in range(6)]),
        name + "Page.data": st.sampled_from([b"\x01" * PAGE_BYTES, b"\x02" * 100, b"\x03"]),
    }


PREPARE_OF = {"CompleteStore": "PrepareStore", "CompleteLoad": "PrepareLoad"}


def kvstore_calls() -> st.SearchStrategy:
    """(call, lease, then_complete). `lease` k, when set, makes a Complete* call name the k-th
    latest lease of its kind this example was given (an index, so drawing never depends on what
    the store answered); `then_complete`, when set, completes an accepted Prepare* at once
    (CompleteStore with ok=then_complete)."""
    plausible = kvstore_fields()
    widened_fields = {field: widened(field, values) for field, values in plausible.items()}
    two_phases = [(st.tuples(st.just(method.name), messages(method.input_type, plausible)), 1)
                  for method in KVSTORE.methods if method.name in (*PREPARE_OF, *PREPARE_OF.values())]
    call = weighted([(calls(KVSTORE, widened_fields), 2), (calls(KVSTORE, plausible), 2), *two_phases])
    return st.tuples(call, weighted([(st.none(), 1), (st.integers(0, 3), 3)]),
                     st.one_of(st.none(), st.booleans()))


def call_kvstore(stub, call: tuple, lease: int | None, then_complete: bool | None,
                 leases: dict[str, list[int]], seen: collections.Counter) -> None:
    """One call (and its Complete* if asked); `leases` collects the lease ids the store hands
    out, per Prepare* RPC. Asserts each status."""
    name, request = call
    given = leases.get(PREPARE_OF.get(name))
    if given and lease is not None:
        request.lease_id = given[-1 - lease % len(given)]
    reply, code = None, Code.OK
    try:
        if name in ("PutPages", "GetPages"):
            code = invoke(stub, KVSTORE, name, request, timeout_s=30)
        else:
            reply = getattr(stub, name)(request, timeout=30)
    except grpc.RpcError as error:
        code = error.code()
    seen[name, code] += 1
    assert code in KVSTORE_STATUSES, (name, code, request)
    if reply is not None and name in leases:
        leases[name].append(reply.lease_id)
        if then_complete is not None:
            complete = "CompleteStore" if name == "PrepareStore" else "CompleteLoad"
            message = (kvstore_pb2.CompleteStoreRequest(lease_id=reply.lease_id, ok=then_complete)
                       if name == "PrepareStore" else kvstore_pb2.CompleteLoadRequest(lease_id=reply.lease_id))
            call_kvstore(stub, (complete, message), None, None, leases, seen)


def round_trip(client: KVStoreClient, names: list[str]) -> list[bytes]:
    """Register, store the pages of `names` in two phases, load them back in two phases."""
    layout = client.register(NAMESPACE, PAGE_BYTES)
    arena = map_arena(layout)
    try:
        pages = [(key_of(n), page_of(key_of(n), PAGE_BYTES)) for n in names]
        store_pages(client, arena, layout, pages)
        return load_pages(client, arena, layout, [key for key, _ in pages])
    finally:
        arena.close()


@pytest.fixture(scope="module")
def kvstore():
    """(daemon, client) of a kvstore with a tiny RAM tier over a small disk tier."""
    run_dir = Path(tempfile.mkdtemp(prefix="st"))
    address = f"unix:{run_dir / 'kv.sock'}"
    daemon = start_daemon(["--ram", "32KiB", "--shm-dir", str(run_dir), "--disk", str(run_dir / "disk"),
                           "--disk-size", "1MiB", "--fsync", "never", "--lease-ttl", str(LEASE_TTL_S),
                           "--listen", address, "--token-file", TOKEN_FILE])
    client = KVStoreClient(address, token=TOKEN, timeout_s=30)
    try:
        yield daemon, client
    finally:
        client.close()
        daemon.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def test_kvstore_rpcs_answer_a_documented_status_and_keep_the_bytes(kvstore):
    daemon, client = kvstore
    before = [f"known-{i}" for i in range(4)]
    assert round_trip(client, before) == [page_of(key_of(n), PAGE_BYTES) for n in before]
    stub, seen = kvstore_pb2_grpc.KVStoreStub(with_token(client.channel, TOKEN)), collections.Counter()

    def run(sequence, leases: dict[str, list[int]]) -> None:
        for call, lease, then_complete in sequence:
            call_kvstore(stub, call, lease, then_complete, leases, seen)

    @fuzz_settings(max_examples=400)
    @given(st.lists(kvstore_calls(), min_size=1, max_size=8))
    def fuzz(sequence):
        leases = {"PrepareStore": [], "PrepareLoad": []}   # two clients at once share them
        with ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(run, sequence[::2], leases), pool.submit(run, sequence[1::2], leases)]:
                future.result()
        assert daemon.process.poll() is None, daemon.output[-20:]
    fuzz()
    print_statuses(seen)
    deadline = time.monotonic() + 10 * LEASE_TTL_S
    while client.stats().num_leases and time.monotonic() < deadline:
        time.sleep(0.1)   # leases the fuzzing left open expire
    assert client.stats().num_leases == 0
    after = [f"after-{i}" for i in range(4)]
    assert round_trip(client, after) == [page_of(key_of(n), PAGE_BYTES) for n in after]
    layout = client.register(NAMESPACE, PAGE_BYTES)
    arena = map_arena(layout)
    kept = load_pages(client, arena, layout, [key_of(n) for n in before])   # unless evicted
    arena.close()
    assert kept == [page_of(key_of(n), PAGE_BYTES) for n in before][:len(kept)]
    assert daemon.process.poll() is None


# ---- bytes the protobuf runtime cannot decode, on the internal services ---------------------

UNDECODABLE = {   # a string field holding bytes that are not UTF-8
    "kvstore": ("/strata.v1.KVStore/Register",
                kvstore_pb2.RegisterRequest(namespace="ab", page_bytes=PAGE_BYTES)),
    "executor": ("/strata.v1.Executor/MapArena",
                 executor_pb2.MapArenaRequest(arena_id="ab", arena_path="/nowhere", slot_bytes=SLOT_BYTES,
                                              num_slots=1)),
}


@pytest.mark.parametrize("daemon", UNDECODABLE)
def test_an_undecodable_request_to_an_internal_service_is_invalid_argument(daemon, request):
    channel = with_token(request.getfixturevalue("kvstore")[1].channel if daemon == "kvstore" else
                         request.getfixturevalue("executor")[3], TOKEN)
    path, message = UNDECODABLE[daemon]
    data = message.SerializeToString().replace(b"ab", b"\xff\xfe")
    assert status_of(channel.unary_unary(path), data, timeout=30) == Code.INVALID_ARGUMENT
