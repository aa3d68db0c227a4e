"""A Redis/Valkey (or Redis Cluster) backing: the cache that several serving instances share.

    key    strata:<namespace>:<page key hex>          one key per page
    value  header (magic, version, page_bytes, xxh3-64 of the page) + the page's bytes

Writes are SET NX (PX when --backing-ttl) in pipelines on one writer thread, fed by a queue
whose page copies live in reused buffers bounded in bytes (buffer_pool.py): write() copies the
page and returns at once (a full queue or an open circuit skips the store, counted). Lookups
are pipelined EXISTS, fetches pipelined GETs. Eviction is the server's maxmemory policy. A
value whose length, header or checksum is wrong is a miss (counted in num_corrupt, and deleted),
never data.

Bounded time: every socket has a small timeout and no retries; the first failure opens a
circuit, so calls miss at once for `cooldown_s`, then one call probes and a success closes it.
On a cluster each batch goes as one pipeline per master, each master with its own circuit: a
master that is down costs the keys it holds, and the others still hit.

Locking: no store lock is taken here; network I/O runs unlocked; the counters have the Backing
lock, the pending writes and their buffers `queue_lock`, the client `client_lock`, the circuit
its own.
"""
import logging
import queue
import struct
import threading
import time
from dataclasses import dataclass

import redis
import xxhash
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from kvstore.backing import Backing
from kvstore.buffer_pool import BufferPool
from kvstore.index import Entry
from kvstore.redis_target import BackingConfigError, RedisTarget, connect

log = logging.getLogger("strata.kvstore")

HEADER = struct.Struct("<4sIIQ")   # magic, version, page_bytes, xxh3-64 of the page
MAGIC, VERSION = b"STKV", 1
PIPELINE_PAGES = 32   # GETs / SETs per round trip (at 1 MiB pages: 32 MiB a batch)
PIPELINE_KEYS = 128   # EXISTS per round trip
FAILED = object()   # the reply of a command whose server did not answer: a miss or a skip


@dataclass(slots=True)
class RedisConfig:
    target: RedisTarget
    namespace: str = "default"
    ttl_s: float | None = None
    timeout_s: float = 0.5
    cooldown_s: float = 1.0
    queue_bytes: int = 64 << 20   # page copies waiting for the writer, in reused buffers


def encode_into(buffer: bytearray, page: memoryview) -> None:
    """The stored value of `page` (header, then the page), written into a buffer of
    HEADER.size + len(page) bytes."""
    HEADER.pack_into(buffer, 0, MAGIC, VERSION, len(page), xxhash.xxh3_64_intdigest(page))
    buffer[HEADER.size:] = page


def decode_value(value: bytes | bytearray) -> memoryview | None:
    """The page inside a stored value (a view: no copy), or None when its header, length or
    checksum is wrong."""
    if len(value) < HEADER.size:
        return None
    magic, version, page_bytes, checksum = HEADER.unpack_from(value)
    page = memoryview(value)[HEADER.size:]
    if (magic, version, page_bytes) != (MAGIC, VERSION, len(page)) or \
            xxhash.xxh3_64_intdigest(page) != checksum:
        return None
    return page


def run_pipeline(client: redis.Redis, names: list[str], add, raise_on_error: bool = True) -> list:
    """One round trip: `add(pipe, name)` for each name. A command's error raises, or with
    raise_on_error=False is its reply."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        add(pipe, name)
    return pipe.execute(raise_on_error=raise_on_error)


def is_redirect(reply) -> bool:
    """A cluster's MOVED/ASK reply: the slot lives on another master now."""
    return isinstance(reply, redis.ResponseError) and str(reply).startswith(("MOVED", "ASK"))


class Circuit:
    """Closed: calls go through. A failure opens it: calls are refused for `cooldown_s`, then
    one call probes (the next one waits another cool-down); a success closes it. Its own lock."""

    def __init__(self, cooldown_s: float) -> None:
        self.cooldown_s = cooldown_s
        self.lock = threading.Lock()
        self.is_open = False
        self.open_until = 0.0

    def is_refusing(self) -> bool:
        with self.lock:
            return self.is_open and time.monotonic() < self.open_until

    def can_call(self) -> bool:
        """True if closed, or open with the cool-down over (this call is the probe)."""
        with self.lock:
            if not self.is_open:
                return True
            if time.monotonic() < self.open_until:
                return False
            self.open_until = time.monotonic() + self.cooldown_s
            return True

    def succeeded(self) -> bool:
        """Close it; True if it was open."""
        with self.lock:
            was_open, self.is_open = self.is_open, False
            return was_open

    def failed(self) -> bool:
        """Open it (again) for a cool-down; True if it was closed."""
        with self.lock:
            was_open, self.is_open = self.is_open, True
            self.open_until = time.monotonic() + self.cooldown_s
            return not was_open


class RedisBacking(Backing):
    is_shared = True

    def __init__(self, config: RedisConfig) -> None:
        super().__init__()
        self.config = config
        self.prefix = f"strata:{config.namespace}:"
        self.circuit = Circuit(config.cooldown_s)
        self.master_circuits: dict[str, Circuit] = {}   # cluster: "host:port" -> its circuit
        self.client: redis.Redis | RedisCluster | None = None
        self.client_lock = threading.Lock()
        self.queue: "queue.Queue[bytes | None]" = queue.Queue()   # keys of `pending`, None: close
        self.queue_lock = threading.Lock()
        self.pending: dict[bytes, bytearray] = {}   # key -> value queued, not yet sent
        self.buffers = BufferPool(config.queue_bytes)   # the pending values' memory
        self.writer = threading.Thread(target=self._write_loop, name="kv-redis-writer", daemon=True)
        self.writer.start()

    # Start-up ------------------------------------------------------------------------------

    def check_access(self) -> None:
        """Connect once. Raises BackingConfigError when the server refuses the login (a wrong
        or missing password or user) or its certificate; a server that is down is a warning."""
        try:
            self._client()
        except redis.AuthenticationError as error:
            raise BackingConfigError(
                f"{self.config.target.describe()} refused the login ({error}): give the right "
                "user:password in the --backing URL or $STRATA_KVSTORE_BACKING_PASSWORD") from None
        except (redis.RedisError, RedisClusterException) as error:
            if "CERTIFICATE_VERIFY_FAILED" in str(error):
                raise BackingConfigError(
                    f"{self.config.target.describe()}'s TLS certificate is not trusted ({error}): "
                    "give the CA that signed it with --backing-ca PEM") from None
            self.circuit.failed()
            log.warning("backing %s is down at start (%s): misses until it is back",
                        self.config.target.describe(), error)

    def _client(self) -> redis.Redis | RedisCluster:
        with self.client_lock:
            if self.client is None:
                self.client = connect(self.config.target, self.config.timeout_s)
            return self.client

    def _call(self, action: str, function, default):
        """function(client)'s result, or `default` at once while the circuit is open or when
        the call fails (which opens it)."""
        if not self.circuit.can_call():
            return default
        try:
            result = function(self._client())
        except (redis.RedisError, RedisClusterException) as error:
            if self.circuit.failed():
                log.warning("backing %s failed (%s: %s): misses for %.1f s, then a probe",
                            action, type(error).__name__, error, self.config.cooldown_s)
            self.count("num_io_errors")
            return default
        if self.circuit.succeeded():
            log.info("backing is back (%s succeeded)", action)
        return result

    def name(self, key: bytes) -> str:
        """The Redis key of a page key."""
        return self.prefix + key.hex()

    # Writes --------------------------------------------------------------------------------

    def write(self, entry: Entry, slot: memoryview) -> bool:
        """Queue a copy of the page; False (a skipped store) when the queue is full or the
        circuit is open. Until it is sent the copy serves this store's fetches and lookups."""
        if self.circuit.is_refusing():
            self.count("num_store_skips")
            return False
        with self.queue_lock:   # the copy is made under it: one memcpy, the GIL held anyway
            if entry.key in self.pending:
                return True
            buffer = self.buffers.take(HEADER.size + entry.page_bytes)
            if buffer is not None:
                encode_into(buffer, slot[:entry.page_bytes])
                self.pending[entry.key] = buffer
        if buffer is None:
            self.count("num_store_skips")
            return False
        self.queue.put(entry.key)
        return True

    def flush(self) -> None:
        """Wait until every queued write has been sent (or skipped)."""
        self.queue.join()

    def _write_loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            with self.queue_lock:
                values = [self.pending[key] for key in batch]
            self._set_batch([self.name(key) for key in batch], values)
            with self.queue_lock:
                for key in batch:
                    self.buffers.give(self.pending.pop(key))
            for _ in batch:
                self.queue.task_done()
        self.queue.task_done()   # the None that ended the loop

    def _next_batch(self) -> list[bytes] | None:
        """The next keys to send (blocks for the first, takes what else is queued), None at
        close."""
        key = self.queue.get()
        if key is None:
            return None
        batch = [key]
        while len(batch) < PIPELINE_PAGES:
            try:
                key = self.queue.get_nowait()
            except queue.Empty:
                break
            if key is None:   # close(): end after this batch
                self.queue.task_done()
                self.queue.put(None)
                break
            batch.append(key)
        return batch

    def _set_batch(self, names: list[str], values: list[bytes]) -> None:
        ttl_ms = max(1, round(self.config.ttl_s * 1000)) if self.config.ttl_s else None

        value_of = dict(zip(names, values))
        replies = self._pipelined("store", names,
                                  lambda pipe, name: pipe.set(name, value_of[name], nx=True, px=ttl_ms))
        sent = [value for value, reply in zip(values, replies) if reply is not FAILED]
        self.count("bytes_in", sum(len(value) - HEADER.size for value in sent))
        if len(sent) < len(values):
            self.count("num_store_skips", len(values) - len(sent))

    # Reads ---------------------------------------------------------------------------------

    def fetch(self, keys: list[bytes]) -> dict[bytes, bytes | memoryview]:
        with self.queue_lock:   # copies: a pending buffer is reused once it is sent
            pages = {key: bytes(decode_value(self.pending[key])) for key in keys
                     if key in self.pending}
        remote = [key for key in keys if key not in pages]
        for start in range(0, len(remote), PIPELINE_PAGES):
            batch = remote[start:start + PIPELINE_PAGES]
            values = self._pipelined("fetch", [self.name(key) for key in batch],
                                     lambda pipe, name: pipe.get(name))
            if all(value is FAILED for value in values):
                break
            corrupt = []
            for key, value in zip(batch, values):
                if value is FAILED:
                    continue
                page = decode_value(value) if value is not None else None
                if page is not None:
                    pages[key] = page
                elif value is not None:
                    corrupt.append(self.name(key))
            if corrupt:
                self._delete_corrupt(corrupt)
        return pages

    def _delete_corrupt(self, names: list[str]) -> None:
        """Counted misses; deleted, since SET NX would never replace them with a good copy."""
        log.warning("backing values corrupt (header, length or checksum): misses, deleted: %s",
                    " ".join(names))
        self.count("num_corrupt", len(names))

        self._pipelined("delete", names, lambda pipe, name: pipe.delete(name))

    def num_leading_present(self, keys: list[bytes]) -> int:
        with self.queue_lock:   # the leading pages still on their way count as present
            num_present = next((i for i, key in enumerate(keys) if key not in self.pending),
                               len(keys))
        keys = keys[num_present:]
        for start in range(0, len(keys), PIPELINE_KEYS):
            batch = keys[start:start + PIPELINE_KEYS]
            found = self._pipelined("lookup", [self.name(key) for key in batch],
                                    lambda pipe, name: pipe.exists(name))
            for is_present in found:
                if is_present is FAILED or not is_present:
                    return num_present
                num_present += 1
        return num_present

    # Pipelines -----------------------------------------------------------------------------

    def _pipelined(self, action: str, names: list[str], add) -> list:
        """Each name's reply to the command `add(pipe, name)` queues, FAILED where its server did
        not answer: one server takes one pipeline; a cluster one pipeline per master."""
        def send(client) -> list:
            if isinstance(client, RedisCluster):
                return self._per_master(action, client, names, add)
            return run_pipeline(client, names, add)
        return self._call(action, send, None) or [FAILED] * len(names)

    def _per_master(self, action: str, cluster: RedisCluster, names: list[str], add) -> list:
        """Unlocked. The names grouped by the master of their slot, a pipeline to each master
        whose circuit lets it through; a master that fails opens its own circuit and its names
        are FAILED, the others' replies stand."""
        groups: dict[str, tuple] = {}
        for index, name in enumerate(names):
            node = cluster.get_node_from_key(name)
            groups.setdefault(node.name, (node, []))[1].append(index)
        replies = [FAILED] * len(names)
        for node_name, (node, indices) in groups.items():
            circuit = self.master_circuits.setdefault(node_name, Circuit(self.config.cooldown_s))
            if not circuit.can_call():
                continue
            try:
                found = run_pipeline(cluster.get_redis_connection(node),
                                     [names[i] for i in indices], add, raise_on_error=False)
            except redis.RedisError as error:
                if circuit.failed():
                    log.warning("backing %s on master %s failed (%s: %s): its keys miss for "
                                "%.1f s, then a probe", action, node_name, type(error).__name__,
                                error, self.config.cooldown_s)
                self.count("num_io_errors")
                continue
            if circuit.succeeded():
                log.info("backing master %s is back (%s succeeded)", node_name, action)
            if any(is_redirect(reply) for reply in found):   # slots moved: learn the new map
                cluster.nodes_manager.initialize()
            for index, reply in zip(indices, found):
                replies[index] = FAILED if isinstance(reply, Exception) else reply
        return replies

    def close(self) -> None:
        self.queue.put(None)
        self.writer.join(timeout=5)
        with self.client_lock:
            if self.client is not None:
                self.client.close()
