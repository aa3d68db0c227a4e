"""The NVMe tier's segment files through a real in-process Store: records round-trip across
many segments, sealed segments rebuild from their index files, a torn or corrupt tail is cut,
and space is reclaimed a whole segment at a time within the budget."""
import contextlib
import logging
import os

from bench.kvstore_pages import key_of, page_of
from kvstore.arena import ALIGN
from kvstore.disk import HEADER_BYTES, FsyncMode, disk_bytes, record_bytes
from kvstore.disk_tier import SEGMENTS_PER_BUDGET
from kvstore.store import Store, StoreConfig
from kvstore_harness import NUM_SLOTS, PAGE, Harness, uid

RECORDS_PER_SEGMENT = 4
SEGMENT = ALIGN + RECORDS_PER_SEGMENT * disk_bytes(PAGE)  # the index block, then 4 records
BUDGET = SEGMENTS_PER_BUDGET * SEGMENT


@contextlib.contextmanager
def running(shm_dir, tmp_path, disk_bytes: int = BUDGET):
    """A store on tmp_path/disk whose segments hold RECORDS_PER_SEGMENT pages; closed after."""
    config = StoreConfig(ram_bytes=NUM_SLOTS * PAGE, shm_dir=shm_dir, fsync=FsyncMode.NEVER,
                         disk_bytes=disk_bytes, disk_dir=str(tmp_path / "disk"))
    kv = Harness(Store(config), f"unix:{tmp_path}/kv-{uid('sock')[-12:]}.sock")
    try:
        yield kv
    finally:
        kv.close()


def put_each(kv, names: list[str]) -> None:
    for name in names:  # one at a time: each put past the 4 RAM slots evicts one page to disk
        kv.put(name)


def segment_dir(tmp_path) -> str:
    return str(tmp_path / "disk" / "segments")


def files_of(tmp_path, ext: str) -> list[str]:
    return sorted(n for n in os.listdir(segment_dir(tmp_path)) if n.endswith(ext))


def disk_keys(kv) -> dict[bytes, tuple[int, int]]:
    """key -> (segment, offset) of every page the NVMe tier holds."""
    return {e.key: (e.disk_segment, e.disk_offset) for e in kv.store.index if e.is_on_disk}


def expected(names: list[str]) -> list[bytes]:
    return [page_of(key_of(name), PAGE) for name in names]


def test_records_round_trip_exactly_across_many_segments(shm_dir, tmp_path):
    names = [uid(i) for i in range(30)]
    with running(shm_dir, tmp_path) as kv:
        put_each(kv, names)
        assert len(disk_keys(kv)) == 30 - NUM_SLOTS
        assert len({seq for seq, _ in disk_keys(kv).values()}) == 7   # 26 pages, 4 a segment
        for name in names:   # one at a time: each load promotes from disk into a free slot
            assert kv.get(name) == expected([name])


def test_sealing_writes_the_index_and_a_restart_rebuilds_the_same_keys(shm_dir, tmp_path):
    names = [uid(i) for i in range(30)]
    with running(shm_dir, tmp_path) as kv:
        put_each(kv, names)
        before = disk_keys(kv)
    assert files_of(tmp_path, ".idx") == [n.replace(".seg", ".idx")
                                          for n in files_of(tmp_path, ".seg")]
    with running(shm_dir, tmp_path) as kv:
        assert kv.store.num_rebuilt == len(before) and disk_keys(kv) == before
        on_disk = [name for name in names if key_of(name) in before]
        for name in on_disk:
            assert kv.get(name) == expected([name])


def unseal_last_segment(tmp_path) -> str:
    """Make the newest segment look like the open one of a crashed run: no index file."""
    last = files_of(tmp_path, ".seg")[-1]
    os.unlink(os.path.join(segment_dir(tmp_path), last.replace(".seg", ".idx")))
    return os.path.join(segment_dir(tmp_path), last)


def test_a_torn_tail_is_cut_and_invisible_after_restart(shm_dir, tmp_path):
    names = [uid(i) for i in range(NUM_SLOTS + 6)]   # 6 on disk: segments of 4 and 2 pages
    with running(shm_dir, tmp_path) as kv:
        put_each(kv, names)
        before = disk_keys(kv)
    path = unseal_last_segment(tmp_path)
    os.truncate(path, os.path.getsize(path) - 100)   # the last record loses its end
    with running(shm_dir, tmp_path) as kv:
        torn, whole = names[5], names[:5]
        assert kv.tiers(torn) == [] and kv.store.num_rebuilt == len(before) - 1
        assert os.path.getsize(path) == record_bytes(PAGE)   # cut at the last whole record
        assert [kv.get(name) for name in whole] == [expected([n]) for n in whole]
        assert kv.client.stats().tiers[1].num_corrupt == 0


def test_a_corrupt_page_in_the_open_segment_ends_the_scan(shm_dir, tmp_path):
    names = [uid(i) for i in range(NUM_SLOTS + 8)]   # 8 on disk: two segments of 4
    with running(shm_dir, tmp_path) as kv:
        put_each(kv, names)
    path = unseal_last_segment(tmp_path)
    with open(path, "r+b") as file:   # a byte of the second record's page
        file.seek(record_bytes(PAGE) + HEADER_BYTES + 7)
        byte = file.read(1)
        file.seek(record_bytes(PAGE) + HEADER_BYTES + 7)
        file.write(bytes([byte[0] ^ 0xFF]))
    with running(shm_dir, tmp_path) as kv:
        assert kv.tiers(*names[:5]) == [2] * 5   # the first segment and the scanned record
        for name in names[5:8]:   # the corrupt record and the ones after it are gone
            assert kv.tiers(name) == []
        assert kv.get(names[4]) == expected([names[4]])


def test_reclaim_drops_the_whole_oldest_segment_and_the_budget_holds(shm_dir, tmp_path):
    names = [uid(i) for i in range(NUM_SLOTS + 60)]   # 60 pages: 15 segments, 8 fit
    first_segment = {}
    with running(shm_dir, tmp_path) as kv:
        disk = kv.store.disk
        for name in names:
            kv.put(name)
            assert disk.num_bytes <= disk.capacity_bytes
            for key, (seq, _) in disk_keys(kv).items():
                first_segment.setdefault(key, seq)
        live = set(disk.segments)
        assert min(live) > 0 and sorted(live) == list(range(min(live), max(live) + 1))
        for key, seq in first_segment.items():
            entry = kv.store.index.get(key)
            if seq in live:
                assert entry.disk_segment == seq
            else:   # dropped with its whole segment: gone, or only in RAM
                assert entry is None or (not entry.is_on_disk and entry.ram_slot is not None)
        dropped = set(first_segment.values()) - live
        assert kv.client.stats().tiers[1].num_evictions == RECORDS_PER_SEGMENT * len(dropped)
        kv.store.flush()
        on_disk = {int(n[:16], 16) for n in files_of(tmp_path, ".seg")}
        assert on_disk <= live and not on_disk & dropped


def test_old_page_files_are_removed_with_one_warning(shm_dir, tmp_path, caplog):
    old = tmp_path / "disk" / "pages" / "ab"
    old.mkdir(parents=True)
    (old / f"{'ab' * 32}-4096.page").write_bytes(b"x" * 8192)
    (tmp_path / "disk" / "tmp").mkdir()   # where that format wrote files before renaming them
    with caplog.at_level(logging.WARNING, "strata.kvstore"), running(shm_dir, tmp_path) as kv:
        assert kv.store.num_rebuilt == 0
    assert not (tmp_path / "disk" / "pages").exists() and not (tmp_path / "disk" / "tmp").exists()
    assert len([r for r in caplog.records if "earlier kvstore format" in r.getMessage()]) == 1


def test_race_a_segment_with_a_page_being_read_is_not_reclaimed_under_it(shm_dir, tmp_path):
    """A read pins its disk-only page before it releases the lock: reclaim skips that segment."""
    names = [uid(i) for i in range(NUM_SLOTS + 60)]
    with running(shm_dir, tmp_path) as kv:
        put_each(kv, names[:NUM_SLOTS + 4])   # segment 0 holds names 0-3
        reading = kv.store.index.get(key_of(names[0]))
        with kv.store.lock:
            reading.num_pins += 1   # as Tiers.read_page does before DiskTier.read
        put_each(kv, names[NUM_SLOTS + 4:])
        assert 0 in kv.store.disk.segments and 1 not in kv.store.disk.segments
        assert kv.store.disk.read(reading) == page_of(key_of(names[0]), PAGE)
        with kv.store.lock:
            reading.num_pins -= 1
        kv.put(uid("one-more"))
        assert 0 not in kv.store.disk.segments


def test_a_lease_written_at_once_still_fills_each_segment_to_its_size(shm_dir, tmp_path):
    """fsync=always hands a whole lease to the tier at once: its 10 records are in flight
    together, and still no segment takes more than RECORDS_PER_SEGMENT of them."""
    config = StoreConfig(ram_bytes=12 * PAGE, shm_dir=shm_dir, fsync=FsyncMode.ALWAYS,
                         disk_bytes=BUDGET, disk_dir=str(tmp_path / "disk"))
    kv = Harness(Store(config), f"unix:{tmp_path}/kv-{uid('sock')[-12:]}.sock")
    try:
        names = [uid(i) for i in range(10)]
        assert kv.put(*names) == 10
        segments = [seq for seq, _ in disk_keys(kv).values()]
        assert sorted(segments.count(seq) for seq in set(segments)) == [2, 4, 4], segments
        assert kv.get(*names) == expected(names)
    finally:
        kv.close()
