"""kill -9 in the middle of a stream of stores, restart on the same directory: every completed
page is served byte-exact and no partial page is visible; a flipped byte is a miss, never data;
100k pages rebuild in < 10 s."""
import os
import re
import shutil
import signal
import tempfile
import threading
import time

import grpc
import pytest

from bench.kvstore_pages import key_of, page_of
from bench.kvstore_process import start_daemon
from bench.kvstore_rebuild import write_segments
from internal_token import TOKEN, TOKEN_FILE
from kvstore.arena_io import load_pages, map_arena, store_pages
from kvstore.disk import HEADER_BYTES, FsyncMode
from kvstore.segments import SegmentFiles
from runtime.kvstore_client import KVStoreClient

pytestmark = pytest.mark.system

PAGE = 16384


@pytest.fixture
def dirs():
    shm = tempfile.mkdtemp(prefix="strata-crash-", dir="/dev/shm")
    disk = tempfile.mkdtemp(prefix="strata-crash-disk-")
    yield shm, disk
    shutil.rmtree(shm, ignore_errors=True)
    shutil.rmtree(disk, ignore_errors=True)


def start(shm: str, disk: str, extra: list[str] = ()):
    sock = f"unix:{disk}/kv.sock"
    daemon = start_daemon(["--ram", "1MiB", "--shm-dir", shm, "--disk", disk, "--disk-size",
                           "2GiB", "--fsync", "always", "--listen", sock, "--token-file", TOKEN_FILE, *extra])
    return daemon, KVStoreClient(sock, token=TOKEN, timeout_s=10)


def rebuilt(daemon) -> tuple[int, float]:
    line = next(line for line in daemon.output if "index rebuilt" in line)
    num_pages, seconds = re.search(r"rebuilt: (\d+) pages in ([\d.]+) s", line).groups()
    return int(num_pages), float(seconds)


def record_of(disk: str, key: bytes) -> tuple[str, int]:
    """The sealed segment file holding `key` and the offset of its record."""
    files = SegmentFiles(disk, FsyncMode.NEVER)
    for seq in files.list_segments():
        records = files.load_index(seq)
        if key in records.keys:
            return files.path(seq), records.offsets[records.keys.index(key)]
    raise KeyError(key.hex())


def store_until_killed(client, completed: list[bytes], stop: threading.Event) -> None:
    layout = client.register("crash", PAGE)
    arena = map_arena(layout)
    index = 0
    try:
        while not stop.is_set():
            keys = [key_of(f"crash-{index}-{j}") for j in range(4)]
            store_pages(client, arena, layout, [(k, page_of(k, PAGE)) for k in keys])
            completed.extend(keys)  # only after CompleteStore returned
            index += 1
    except grpc.RpcError:
        pass  # the daemon was killed mid-stream
    finally:
        arena.close()


def kill_9_while_storing(shm: str, disk: str, extra: list[str] = ()) -> list[bytes]:
    """Start a kvstore, store pages until 200 are complete, kill -9 it mid-stream; the keys
    whose CompleteStore returned."""
    daemon, client = start(shm, disk, extra)
    completed, stop = [], threading.Event()
    writer = threading.Thread(target=store_until_killed, args=(client, completed, stop))
    try:
        writer.start()
        while len(completed) < 200 and writer.is_alive():
            time.sleep(0.01)
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.process.wait()
    finally:
        stop.set()
        writer.join(30)
        client.close()
        daemon.stop()
    assert len(completed) >= 200
    stale = os.listdir(shm)
    assert len(stale) == 1 and str(daemon.pid) in stale[0]   # the dead kvstore's arena
    return completed


def in_flight(completed: list[bytes]) -> list[bytes]:
    """Keys of the stores that may have been in flight at the kill (store_until_killed's names)."""
    return [key_of(f"crash-{len(completed) // 4 + i}-{j}") for i in range(4) for j in range(4)]


def load_all(client, arena, layout, keys: list[bytes]) -> list[bytes]:
    pages = []
    for start_index in range(0, len(keys), 32):  # RAM is 64 pages: loads promote from disk
        pages += load_pages(client, arena, layout, keys[start_index:start_index + 32])
    return pages


def test_kill_9_mid_stream_then_restart_serves_every_completed_page(dirs):
    shm, disk = dirs
    completed = kill_9_while_storing(shm, disk)
    daemon, client = start(shm, disk)
    try:
        assert os.listdir(shm) == []      # removed at start: tmpfs memory is given back
        num_rebuilt = rebuilt(daemon)[0]
        layout = client.register("crash", PAGE)
        arena = map_arena(layout)
        assert load_all(client, arena, layout, completed) == [page_of(k, PAGE) for k in completed]
        # The stores in flight at the kill: each page is whole or absent, never partial.
        present = [k for k in in_flight(completed) if client.lookup("crash", [k]).num_present]
        assert len(completed) + len(present) == num_rebuilt
        assert load_pages(client, arena, layout, present) == [page_of(k, PAGE) for k in present]
        assert client.stats().tiers[1].num_corrupt == 0
        arena.close()
    finally:
        daemon.stop()


def test_kill_9_among_appends_leaves_only_whole_pages_visible(dirs):
    """--write-through with --fsync never: the mover appends to the open segment all the time,
    so the kill lands among appends; the restart indexes whole pages only (a torn tail is cut)."""
    shm, disk = dirs
    completed = kill_9_while_storing(shm, disk, ["--fsync", "never", "--write-through"])
    daemon, client = start(shm, disk)
    try:
        num_rebuilt = rebuilt(daemon)[0]
        layout = client.register("crash", PAGE)
        arena = map_arena(layout)
        stored = completed + in_flight(completed)
        present = [k for k in stored if client.lookup("crash", [k]).num_present]
        assert num_rebuilt > 0 and len(present) == num_rebuilt
        assert load_all(client, arena, layout, present) == [page_of(k, PAGE) for k in present]
        assert client.stats().tiers[1].num_corrupt == 0
        arena.close()
    finally:
        daemon.stop()


def test_flipped_byte_is_a_miss_never_data(dirs):
    shm, disk = dirs
    daemon, client = start(shm, disk)
    layout = client.register("crash", PAGE)
    arena = map_arena(layout)
    good, body_flip, header_flip = (key_of(f"flip-{i}") for i in range(3))
    store_pages(client, arena, layout, [(k, page_of(k, PAGE)) for k in (good, body_flip, header_flip)])
    arena.close()
    daemon.stop()
    for key, offset in ((body_flip, HEADER_BYTES + 100), (header_flip, 40)):
        path, record = record_of(disk, key)   # the clean stop sealed the segment
        with open(path, "r+b") as file:
            file.seek(record + offset)
            byte = file.read(1)
            file.seek(record + offset)
            file.write(bytes([byte[0] ^ 0xFF]))
    daemon, client = start(shm, disk)
    try:
        layout = client.register("crash", PAGE)
        arena = map_arena(layout)
        assert load_pages(client, arena, layout, [good]) == [page_of(good, PAGE)]
        for key in (body_flip, header_flip):
            assert load_pages(client, arena, layout, [key]) == []
            assert list(client.get_pages([key])) == []
            assert client.lookup("crash", [key]).num_present == 0   # forgotten after the miss
        disk_stats = client.stats().tiers[1]
        assert disk_stats.num_corrupt == 2
        arena.close()
    finally:
        daemon.stop()


def test_rebuilding_100k_pages_takes_under_10_s(dirs):
    shm, disk = dirs
    page_bytes = 4096
    keys = [key_of(f"bulk-{i}") for i in range(100_000)]
    data = bytes(range(256)) * (page_bytes // 256)
    # The store's own segment format, written directly (not through gRPC); the other pages' data
    # is a hole, since a rebuild reads index files only.
    write_segments(disk, keys, page_bytes, {0: data, len(keys) - 1: data})
    daemon, client = start(shm, disk)
    try:
        num_pages, seconds = rebuilt(daemon)
        assert num_pages == 100_000 and seconds < 10.0
        layout = client.register("bulk", page_bytes)
        arena = map_arena(layout)
        print(f"rebuilt {num_pages} pages in {seconds:.3f} s")
        assert client.lookup("bulk", keys[::20_000]).num_present == 5
        assert load_pages(client, arena, layout, [keys[0], keys[-1]]) == [data, data]
        arena.close()
    finally:
        daemon.stop()
