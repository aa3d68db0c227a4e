"""The Redis backing against real redis-server processes (loopback ports, started and stopped by
PID): the key and value format, corrupt values, logins, bounded time against a dead, hung or
full backing, and the daemon's flags. Skipped, with the reason, where there is no redis-server."""
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.kvstore_pages import key_of, page_of
from bench.kvstore_process import start_daemon
from bench.redis_process import missing_reason, redis_server, start_server
from internal_token import TOKEN_FILE
from kvstore import daemon
from kvstore.index import Entry, EntryState
from kvstore.redis_backing import HEADER, RedisBacking, RedisConfig
from kvstore.redis_target import BackingConfigError, parse_target
from kvstore.stats import Tier
from kvstore.store import Store, StoreConfig
from strata.launcher import free_port
from strata.supervisor import stop_processes

pytestmark = [pytest.mark.system,
              pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]

PAGE = 4096
TIMEOUT_S = 0.2


@pytest.fixture
def server(tmp_path):
    with redis_server(tmp_path / "redis") as running:
        yield running


def backing_of(url: str, **options) -> RedisBacking:
    return RedisBacking(RedisConfig(parse_target(url), timeout_s=TIMEOUT_S, **options))


def write(backing: RedisBacking, *names) -> list[bool]:
    return [backing.write(Entry(key_of(name), PAGE, EntryState.READY),
                          memoryview(page_of(key_of(name), PAGE))) for name in names]


def test_one_key_per_page_under_the_namespace_with_a_header(server):
    backing = backing_of(server.url, namespace="prod-llama", ttl_s=60)
    assert write(backing, "a", "b") == [True, True]
    backing.flush()
    name = f"strata:prod-llama:{key_of('a').hex()}"
    value = server.client().get(name)
    assert len(value) == HEADER.size + PAGE and value[HEADER.size:] == page_of(key_of("a"), PAGE)
    assert 0 < server.client().pttl(name) <= 60_000
    keys = [key_of("a"), key_of("b"), key_of("absent")]
    assert backing.num_leading_present(keys) == 2
    assert backing.fetch(keys) == {key: page_of(key, PAGE) for key in keys[:2]}
    assert backing.counters.bytes_in == 2 * PAGE
    backing.close()


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "header only", "bad magic", "empty"])
def test_a_corrupt_or_truncated_value_is_a_counted_miss_and_deleted(server, damage):
    backing = backing_of(server.url)
    write(backing, damage)
    backing.flush()
    key = key_of(damage)
    name = f"strata:default:{key.hex()}"
    value = server.client().get(name)
    damaged = {"flipped byte": value[:-1] + bytes([value[-1] ^ 1]), "truncated": value[:-100],
               "header only": value[:HEADER.size], "bad magic": b"XXXX" + value[4:],
               "empty": b""}[damage]
    server.client().set(name, damaged)
    assert backing.fetch([key]) == {}
    assert backing.counters.num_corrupt == 1
    assert server.client().exists(name) == 0   # so a good copy can be stored again
    write(backing, damage)
    backing.flush()
    assert backing.fetch([key]) == {key: page_of(key, PAGE)}
    backing.close()


def test_a_store_serves_and_loads_pages_another_instance_put_in_redis(server, shm_dir):
    other = backing_of(server.url)
    write(other, "from-b")
    other.flush()
    other.close()
    store = Store(StoreConfig(ram_bytes=8 * PAGE, shm_dir=shm_dir), backing_of(server.url))
    try:
        key = key_of("from-b")
        assert store.lookup("", [key]) == [Tier.REMOTE]
        assert list(store.get_pages([key])) == [(key, page_of(key, PAGE))]   # bytes, for the wire
        store.register("model-a", PAGE)
        plan = store.prepare_load("model-a", [key])
        assert len(plan.slots) == 1 and store.lookup("", [key]) == [Tier.RAM]
        store.complete_load(plan.lease_id)
        assert store.backing.counters.num_hits == 2
    finally:
        store.close()


def run_kvstore(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """`strata kvstore ARGS` that is expected to exit at start."""
    return subprocess.run([sys.executable, "-m", "strata.cli", "kvstore", "--token-file", TOKEN_FILE,
                           "--listen", f"127.0.0.1:{free_port()}", "--ram", "8MiB", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "STRATA_KVSTORE_BACKING_PASSWORD": "", **(env or {})})


def test_the_password_is_required_when_the_server_has_one(tmp_path):
    with redis_server(tmp_path / "redis", password="s3cret") as server:
        address = f"redis://127.0.0.1:{server.port}"
        for url in (address, f"redis://:wrong@127.0.0.1:{server.port}"):
            result = run_kvstore(["--backing", url])
            assert result.returncode != 0
            assert "refused the login" in result.stderr and "STRATA_KVSTORE_BACKING_PASSWORD" in result.stderr
            assert "wrong" not in result.stderr   # the URL's password is not echoed
        running = start_daemon(["--token-file", TOKEN_FILE, "--listen", f"127.0.0.1:{free_port()}",
                                "--ram", "8MiB", "--backing", address],
                               env={"STRATA_KVSTORE_BACKING_PASSWORD": "s3cret"})
        assert "backing redis://127.0.0.1" in running.output[-1]
        running.stop()
        assert running.process.returncode == 0   # SIGTERM drains and closes the store


def test_an_acl_user_logs_in_with_its_own_password(server):
    server.client().acl_setuser("strata", enabled=True, passwords=["+userpw"], keys=["strata:*"],
                                commands=["+@all"])
    backing = backing_of(f"redis://strata:userpw@127.0.0.1:{server.port}")
    backing.check_access()
    write(backing, "acl")
    backing.flush()
    assert backing.fetch([key_of("acl")]) == {key_of("acl"): page_of(key_of("acl"), PAGE)}
    backing.close()
    with pytest.raises(BackingConfigError, match="refused the login"):
        backing_of(f"redis://strata:nope@127.0.0.1:{server.port}").check_access()


def test_rediss_trusts_the_backing_ca_and_refuses_another(tmp_path):
    for name in ("server", "other"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", f"{tmp_path}/{name}-key.pem", "-out", f"{tmp_path}/{name}.pem",
                        "-subj", "/CN=strata-redis", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
    cert, key = f"{tmp_path}/server.pem", f"{tmp_path}/server-key.pem"
    with redis_server(tmp_path / "redis", password="pw", tls=(cert, key)) as server:
        backing = RedisBacking(RedisConfig(parse_target(server.url, cert)))
        backing.check_access()
        write(backing, "tls")
        backing.flush()
        assert backing.fetch([key_of("tls")]) == {key_of("tls"): page_of(key_of("tls"), PAGE)}
        backing.close()
        untrusting = RedisBacking(RedisConfig(parse_target(server.url, f"{tmp_path}/other.pem")))
        with pytest.raises(BackingConfigError, match="--backing-ca"):
            untrusting.check_access()
        untrusting.close()


def timed(function) -> tuple[object, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def test_a_killed_backing_misses_within_the_timeout_then_at_once_and_comes_back(tmp_path):
    server = start_server(tmp_path / "redis")
    backing = backing_of(server.url, cooldown_s=0.5)
    keys = [key_of(i) for i in range(64)]
    write(backing, *range(64))
    backing.flush()
    assert backing.num_leading_present(keys) == 64
    os.kill(server.pid, signal.SIGKILL)
    server.process.wait()
    (fetched, first_s) = timed(lambda: backing.fetch(keys))
    (found, then_s) = timed(lambda: backing.num_leading_present(keys))
    print(f"\nkilled backing: first fetch {first_s * 1e3:.1f} ms, next lookup {then_s * 1e3:.2f} ms")
    assert fetched == {} and found == 0
    assert first_s < 2 * TIMEOUT_S + 0.1 and then_s < 0.005
    assert write(backing, "while down") == [False] and backing.counters.num_store_skips == 1
    back = start_server(tmp_path / "redis", port=server.port)   # same port, empty
    try:
        time.sleep(0.6)   # the cool-down: the next call probes
        assert write(backing, 0) == [True]
        backing.flush()
        assert backing.fetch(keys[:1]) == {keys[0]: page_of(keys[0], PAGE)}
    finally:
        backing.close()
        stop_processes([back.process], grace_s=5)


def test_a_hung_backing_misses_within_the_timeout_and_a_full_queue_skips_stores(server):
    backing = backing_of(server.url, queue_bytes=3 * (PAGE + HEADER.size))
    keys = [key_of(i) for i in range(8)]
    os.kill(server.pid, signal.SIGSTOP)
    try:
        (found, lookup_s) = timed(lambda: backing.num_leading_present(keys))
        print(f"\nhung backing: lookup {lookup_s * 1e3:.1f} ms")
        assert found == 0 and lookup_s < 2 * TIMEOUT_S + 0.1
        time.sleep(1.1)   # past the cool-down: writes queue again, the writer hangs on the first
        (written, write_s) = timed(lambda: write(backing, *range(8)))
        assert written.count(True) <= 4 and backing.counters.num_store_skips >= 4
        assert write_s < 0.05   # never blocks the caller
    finally:
        os.kill(server.pid, signal.SIGCONT)
    backing.close()


def test_a_backing_down_at_start_is_a_warning_then_misses(tmp_path):
    port = free_port()
    running = start_daemon(["--token-file", TOKEN_FILE, "--listen", f"127.0.0.1:{free_port()}",
                            "--ram", "8MiB", "--backing", f"redis://127.0.0.1:{port}"])
    try:
        assert any("down at start" in line for line in running.output)
    finally:
        running.stop()
    backing = backing_of(f"redis://127.0.0.1:{port}")
    backing.check_access()
    assert backing.fetch([key_of(1)]) == {} and backing.num_leading_present([key_of(1)]) == 0
    backing.close()


@pytest.mark.parametrize("argv, message", [
    (["--backing", "redis://cache"], "is not HOST:PORT"),
    (["--backing", "redis://cache:6379/x"], "database number"),
    (["--backing", "redis://a:1,b:2/3"], "only database 0"),
    (["--backing", "redis://cache:6379", "--backing-ca", "ca.pem"], "needs a rediss:// URL"),
    (["--backing", "redis://cache:6379", "--backing-namespace", "a:b"], "without spaces or ':'"),
    (["--backing", "rediss://cache:6379", "--backing-ca", "/nonexistent.pem"], "no such file"),
    (["--backing", "cache:7433", "--backing-ttl", "60"], "are for a Redis backing"),
])
def test_a_bad_backing_flag_says_what_to_change(argv, message):
    args = daemon.build_parser().parse_args(argv)
    with pytest.raises(BackingConfigError, match=message):
        daemon.open_backing(args)


@pytest.mark.parametrize("flag", ["--backing-ttl", "--backing-timeout"])
def test_seconds_flags_need_a_positive_number(flag, capsys):
    with pytest.raises(SystemExit):
        daemon.build_parser().parse_args([flag, "0"])
    assert "is not a number of seconds > 0" in capsys.readouterr().err
