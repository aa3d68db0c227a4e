"""MapArena maps only what the kvstore created and announced: a regular file (no symlink) directly
inside the arena directory (--arena-dir, default /dev/shm), named as the kvstore names its arenas,
owned by this user, of exactly slot_bytes x num_slots bytes. Anything else is refused with the
status the client sees (FAILED_PRECONDITION: not such an arena; INVALID_ARGUMENT: the wrong size,
as protos/v1/executor.proto says) and a message naming the path and the rule; nothing is mapped."""
import os
import secrets

import grpc
import pytest

from executor.settings import RunnerSettings, build_runner
from kvstore.arena import Arena, align_up
from runtime.arenas import arena_file_name, new_arena_tag

SHM = "/dev/shm"
NUM_SLOTS = 4


@pytest.fixture(scope="module")
def runner(llama_dir):
    runner = build_runner(RunnerSettings(llama_dir, dtype="float32", num_device_blocks=8, block_size=4))
    yield runner
    runner.mover.close()


@pytest.fixture
def shm_paths():
    """Paths in /dev/shm named as the kvstore names its arenas; removed after the test."""
    paths = []

    def new(page_bytes: int, directory: str = SHM) -> str:
        paths.append(os.path.join(directory, arena_file_name(new_arena_tag(os.getpid()), page_bytes)))
        return paths[-1]
    yield new
    for path in paths:
        if os.path.lexists(path):
            os.unlink(path)


def refusal(runner, path: str, slot_bytes: int, num_slots: int = NUM_SLOTS):
    with pytest.raises(Exception) as error:
        runner.mover.map_arena("bad", path, slot_bytes, num_slots)
    assert "bad" not in runner.mover.arenas, "a refused arena must not be mapped"
    return error.value.code, error.value.message


def test_the_kvstores_own_arena_is_mapped(runner, shm_paths):
    slot_bytes = align_up(runner.pool.page_bytes)
    arena = Arena.create(shm_paths(runner.pool.page_bytes), slot_bytes, NUM_SLOTS)
    assert runner.mover.map_arena("ram0", arena.path, slot_bytes, NUM_SLOTS) is False   # CPU: unpinned
    assert runner.mover.arena_slots["ram0"] == NUM_SLOTS
    arena.close()


def test_a_file_outside_the_arena_dir_is_refused(runner, shm_paths, tmp_path):
    slot_bytes = align_up(runner.pool.page_bytes)
    code, message = refusal(runner, "/etc/passwd", slot_bytes, 1)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "/etc/passwd" in message and "directly inside the arena directory /dev/shm" in message
    # Of the right size and name, but elsewhere: still not the kvstore's.
    elsewhere = Arena.create(shm_paths(runner.pool.page_bytes, str(tmp_path)), slot_bytes, NUM_SLOTS)
    code, message = refusal(runner, elsewhere.path, slot_bytes)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and elsewhere.path in message
    elsewhere.close()


def test_a_symlink_to_a_real_arena_is_refused(runner, shm_paths):
    slot_bytes = align_up(runner.pool.page_bytes)
    arena = Arena.create(shm_paths(runner.pool.page_bytes), slot_bytes, NUM_SLOTS)
    link = shm_paths(runner.pool.page_bytes)
    os.symlink(arena.path, link)
    code, message = refusal(runner, link, slot_bytes)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert link in message and "symlink" in message
    arena.close()


def test_a_file_of_the_wrong_size_is_refused(runner, shm_paths):
    slot_bytes = align_up(runner.pool.page_bytes)
    larger = Arena.create(shm_paths(runner.pool.page_bytes), slot_bytes, 2 * NUM_SLOTS)
    code, message = refusal(runner, larger.path, slot_bytes)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert larger.path in message and f"more than slot_bytes x num_slots = {slot_bytes * NUM_SLOTS}" in message
    larger.close()


def test_a_file_not_named_as_an_arena_is_refused(runner, shm_paths):
    slot_bytes = align_up(runner.pool.page_bytes)
    path = os.path.join(SHM, f"not-an-arena-{secrets.token_hex(4)}")
    with open(path, "wb") as file:
        file.truncate(slot_bytes * NUM_SLOTS)
    try:
        code, message = refusal(runner, path, slot_bytes)
    finally:
        os.unlink(path)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert path in message and "not the name of a kvstore arena" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_another_users_file_is_refused(runner, shm_paths):
    slot_bytes = align_up(runner.pool.page_bytes)
    arena = Arena.create(shm_paths(runner.pool.page_bytes), slot_bytes, NUM_SLOTS)
    os.chown(arena.path, 65534, 65534)
    code, message = refusal(runner, arena.path, slot_bytes)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert arena.path in message and "owned by uid 65534" in message
    arena.close()


def test_an_arena_whose_file_is_gone_is_unmapped_when_the_next_is_mapped(runner, shm_paths):
    """A restarted kvstore unlinks its dead predecessor's arena and announces its own: the
    executor drops the old mapping (the unlinked file's memory) instead of keeping it forever."""
    slot_bytes = align_up(runner.pool.page_bytes)
    first = Arena.create(shm_paths(runner.pool.page_bytes), slot_bytes, NUM_SLOTS)
    runner.mover.map_arena("ram-first", first.path, slot_bytes, NUM_SLOTS)
    first.close()
    os.unlink(first.path)
    assert "ram-first" in runner.mover.arenas   # nothing looks until the next MapArena
    second = Arena.create(shm_paths(runner.pool.page_bytes), slot_bytes, NUM_SLOTS)
    runner.mover.map_arena("ram-second", second.path, slot_bytes, NUM_SLOTS)
    assert "ram-first" not in runner.mover.arenas and runner.mover.arena_slots["ram-second"] == NUM_SLOTS
    second.close()
