"""Fixtures of the kvstore tests: a private /dev/shm dir, a backing kvstore process, a private
redis-server, and `make`, which builds a Harness per tier and closes it (checking integrity)
after the test."""
import shutil
import tempfile
from pathlib import Path

import pytest

from bench.kvstore_process import start_daemon
from bench.redis_process import missing_reason, redis_server
from internal_token import TOKEN, TOKEN_FILE
from kvstore.backing import KVStoreBacking
from kvstore.disk import FsyncMode
from kvstore.redis_backing import RedisBacking, RedisConfig
from kvstore.redis_target import parse_target
from kvstore.store import Store, StoreConfig
from kvstore_harness import NUM_SLOTS, PAGE, Harness
from runtime.kvstore_client import KVStoreClient


@pytest.fixture
def shm_dir():
    path = tempfile.mkdtemp(prefix="strata-test-", dir="/dev/shm")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def backing():
    """One backing kvstore process for the module (keys are unique per test)."""
    tmp = tempfile.mkdtemp(prefix="strata-backing-")
    daemon = start_daemon(["--ram", "8MiB", "--shm-dir", "/dev/shm",
                           "--listen", f"unix:{tmp}/backing.sock", "--token-file", TOKEN_FILE])
    yield f"unix:{tmp}/backing.sock"
    daemon.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_url():
    """One private redis-server for the module (keys are unique per test); skipped, with the
    reason, where there is no redis-server."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    tmp = tempfile.mkdtemp(prefix="strata-redis-")
    with redis_server(Path(tmp)) as server:
        yield server.url
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def make(request, shm_dir, tmp_path):
    harnesses = []

    def build(tier: str, lease_ttl_s: float = 30.0, num_slots: int = NUM_SLOTS) -> Harness:
        config = StoreConfig(ram_bytes=num_slots * PAGE, shm_dir=shm_dir, lease_ttl_s=lease_ttl_s,
                             fsync=FsyncMode.NEVER, disk_bytes=1 << 30)
        backing = None
        if tier == "ram+nvme":
            config.disk_dir = str(tmp_path / "disk")
        if tier == "ram+remote":
            backing = KVStoreBacking(KVStoreClient(request.getfixturevalue("backing"), token=TOKEN))
        if tier == "ram+redis":
            backing = RedisBacking(RedisConfig(parse_target(request.getfixturevalue("redis_url"))))
        harness = Harness(Store(config, backing), f"unix:{tmp_path}/kv{len(harnesses)}.sock")
        harnesses.append(harness)
        return harness
    yield build
    for harness in harnesses:
        harness.close()
