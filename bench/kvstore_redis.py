"""The Redis backing's part of `python -m bench.kvstore_tiers`: its put (write + flush: SET NX
pipelines from the writer thread) and get (fetch: pipelined GETs, header and checksum checked)
against a raw redis-py pipeline of SET / GET of the same value sizes on the same server, in the
same run. Keys are the bench's own (namespace bench-PID) and are deleted after each size."""
import os
import tempfile
import time
from pathlib import Path

import redis

from bench.kvstore_pages import key_of
from bench.redis_process import missing_reason, redis_server
from kvstore.index import Entry, EntryState
from kvstore.redis_backing import HEADER, PIPELINE_PAGES, RedisBacking, RedisConfig
from kvstore.redis_target import connect, parse_target

PAGE_SIZES = [64 << 10, 256 << 10, 1 << 20, 4 << 20]
REPEATS = 5   # the VM's noise is 30-50% run to run


def bench_redis(total: int, url: str | None) -> None:
    """On the server at `url`, else on a private redis-server (skipped, saying why, without one)."""
    if url is not None:
        run_sizes(total, url)
        return
    reason = missing_reason()
    if reason:
        print(f"Redis backing: skipped ({reason}; or give --redis URL)")
        return
    with tempfile.TemporaryDirectory(prefix="strata-bench-redis-") as directory:
        with redis_server(Path(directory)) as server:
            run_sizes(total, server.url)


def run_sizes(total: int, url: str) -> None:
    target = parse_target(url)
    print(f"Redis backing ({target.describe()}): backing put/get vs a raw redis-py pipeline "
          f"({PIPELINE_PAGES} values a round trip), best of {REPEATS} interleaved")
    raw = connect(target, timeout_s=30)
    backing = RedisBacking(RedisConfig(target, namespace=f"bench-{os.getpid()}", timeout_s=30))
    try:
        for page in PAGE_SIZES:
            num_pages = max(total // page, 1)
            keys = [key_of(f"redis-{page}-{i}") for i in range(num_pages)]
            raw_put, raw_get, put, get = best_of(raw, [
                (lambda: raw_put_all(raw, keys, page + HEADER.size), lambda: raw_get_all(raw, keys),
                 raw_names(keys)),
                (lambda: backing_put_all(backing, keys, page), lambda: backing_get_all(backing, keys),
                 [backing.name(key) for key in keys])])
            num_bytes = num_pages * page
            print(f"  page {page >> 10:5d} KiB: put {num_bytes / put / 1e9:5.2f} GB/s vs raw "
                  f"{num_bytes / raw_put / 1e9:5.2f} ({raw_put / put:4.0%}) | get "
                  f"{num_bytes / get / 1e9:5.2f} vs raw {num_bytes / raw_get / 1e9:5.2f} "
                  f"({raw_get / get:4.0%})")
    finally:
        backing.close()
        raw.close()


def best_of(client, contenders: list[tuple]) -> list[float]:
    """The best put and get seconds of each (put, get, names) contender over REPEATS rounds,
    the contenders taking turns within a round (the VM's noise then hits them alike). Each
    deletes its keys after its get, so every put starts on a server holding none of the bench's
    (a SET NX on a present key would do no work, and a fuller server allocates fresh memory)."""
    best = [float("inf")] * (2 * len(contenders))
    for _ in range(REPEATS):
        for index, (put, get, names) in enumerate(contenders):
            best[2 * index] = min(best[2 * index], timed(put))
            best[2 * index + 1] = min(best[2 * index + 1], timed(get))
            delete(client, names)
    return best


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def raw_names(keys: list[bytes]) -> list[str]:
    return [f"bench-raw:{key.hex()}" for key in keys]


def batches(items: list):
    for start in range(0, len(items), PIPELINE_PAGES):
        yield items[start:start + PIPELINE_PAGES]


def raw_put_all(client, keys: list[bytes], value_bytes: int) -> None:
    value = os.urandom(value_bytes)
    for batch in batches(raw_names(keys)):
        pipe = client.pipeline(transaction=False)
        for name in batch:
            pipe.set(name, value)
        pipe.execute()


def raw_get_all(client, keys: list[bytes]) -> None:
    """Every value, kept until the end (as the backing's fetch returns them all)."""
    values = []
    for batch in batches(raw_names(keys)):
        pipe = client.pipeline(transaction=False)
        for name in batch:
            pipe.get(name)
        values += pipe.execute()
    assert all(value is not None for value in values)


def backing_put_all(backing: RedisBacking, keys: list[bytes], page: int) -> None:
    slot = memoryview(os.urandom(page))
    for key in keys:
        while not backing.write(Entry(key, page, EntryState.READY), slot):
            time.sleep(0.001)   # the write queue is full: let the writer drain it
    backing.flush()


def backing_get_all(backing: RedisBacking, keys: list[bytes]) -> None:
    assert len(backing.fetch(keys)) == len(keys)


def delete(client: redis.Redis, names: list[str]) -> None:
    for batch in batches(names):
        pipe = client.pipeline(transaction=False)
        for name in batch:   # one key a command: a cluster's keys lie in different slots
            pipe.delete(name)
        pipe.execute()
