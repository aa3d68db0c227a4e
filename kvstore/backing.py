"""The tier below this kvstore (Tier.REMOTE): the interface every backing implements, and the one
that is another Strata kvstore over gRPC (`--backing HOST:PORT`). The Redis/Valkey one
(`--backing redis://...`) is in redis_backing.py; daemon.open_backing builds either from the flag.

Locking: every call is made without the store's lock (network I/O never holds it). A backing
guards its own counters with its own small lock; the caller sets `entry.is_in_backing` under
the store's lock after a write that returned True.
"""
import abc
import logging
import threading

import grpc

from kvstore.index import Entry
from kvstore.stats import TierCounters
from runtime.kvstore_client import KVStoreClient

log = logging.getLogger("strata.kvstore")


class Backing(abc.ABC):
    """What Store, Tiers and RemotePages call. A backing that is down, slow or full is a miss
    or a skipped store (logged and counted) within bounded time, never an error for the caller.

    `is_shared`: other serving instances read this backing, so the store copies every page
    down at CompleteStore (write-through), not only on eviction."""

    is_shared = False

    def __init__(self) -> None:
        self.counters = TierCounters()
        self.counters_lock = threading.Lock()

    @abc.abstractmethod
    def write(self, entry: Entry, slot: memoryview) -> bool:
        """Entry pinned in RAM. Copy the page's bytes out of `slot` before returning (the slot
        may be freed right after); True if the page is (or is on its way to be) in the backing,
        False if the store was skipped."""

    @abc.abstractmethod
    def fetch(self, keys: list[bytes]) -> dict[bytes, bytes | memoryview]:
        """The pages the backing holds among `keys` ({} when it is down), as bytes or a
        read-only view the caller may keep. Never a corrupt page."""

    @abc.abstractmethod
    def num_leading_present(self, keys: list[bytes]) -> int:
        """How many leading keys the backing holds (0 when it is down)."""

    def close(self) -> None:
        """Release connections; pending writes may be dropped."""

    def count_hit(self, num_bytes: int) -> None:
        with self.counters_lock:
            self.counters.count_hit(num_bytes)

    def count(self, counter: str, amount: int = 1) -> None:
        """Add `amount` to the TierCounters field named `counter`."""
        with self.counters_lock:
            setattr(self.counters, counter, getattr(self.counters, counter) + amount)


class KVStoreBacking(Backing):
    """Another Strata kvstore, reached with a KVStoreClient (PutPages / GetPages / Lookup)."""

    def __init__(self, client: KVStoreClient) -> None:
        super().__init__()
        self.client = client

    def write(self, entry: Entry, slot: memoryview) -> bool:
        data = bytes(slot[:entry.page_bytes])
        try:
            self.client.put_pages([(entry.key, data)])
        except grpc.RpcError as error:
            log.warning("backing store skipped: %s", error.code())
            self.count("num_store_skips")
            return False
        self.count("bytes_in", len(data))
        return True

    def fetch(self, keys: list[bytes]) -> dict[bytes, bytes]:
        try:
            return dict(self.client.get_pages(keys))
        except grpc.RpcError as error:
            log.warning("backing fetch failed: %s", error.code())
            return {}

    def num_leading_present(self, keys: list[bytes]) -> int:
        try:
            return self.client.lookup("", keys).num_present
        except grpc.RpcError as error:
            log.warning("backing lookup failed: %s", error.code())
            return 0

    def close(self) -> None:
        self.client.close()
