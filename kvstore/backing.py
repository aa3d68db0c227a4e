"""The backing kvstore: the tier below this one (Tier.REMOTE), reached with a KVStoreClient.

Every call is made unlocked. A backing that is down is a miss or a skipped store, logged and
counted, never an error for the caller; the store's one lock (handed in) guards the counters
and each entry's `is_in_backing`.
"""
import logging
import threading

import grpc

from kvstore.index import Entry
from kvstore.stats import TierCounters
from runtime.kvstore_client import KVStoreClient

log = logging.getLogger("strata.kvstore")


class BackingTier:
    def __init__(self, client: KVStoreClient, lock: threading.Condition) -> None:
        self.client = client
        self.lock = lock
        self.counters = TierCounters()

    def write(self, entry: Entry, slot: memoryview) -> bool:
        """Unlocked, entry pinned. A backing that is down skips the store (counted)."""
        data = bytes(slot[:entry.page_bytes])
        try:
            self.client.put_pages([(entry.key, data)])
        except grpc.RpcError as error:
            log.warning("backing store skipped: %s", error.code())
            with self.lock:
                self.counters.num_store_skips += 1
            return False
        with self.lock:
            entry.is_in_backing = True
            self.counters.bytes_in += len(data)
        return True

    def fetch(self, keys: list[bytes]) -> dict[bytes, bytes]:
        """Unlocked. Pages the backing holds among `keys` ({} when it is down)."""
        try:
            return dict(self.client.get_pages(keys))
        except grpc.RpcError as error:
            log.warning("backing fetch failed: %s", error.code())
            return {}

    def num_leading_present(self, keys: list[bytes]) -> int:
        """Unlocked. How many leading keys the backing holds (0 when it is down)."""
        try:
            return self.client.lookup("", keys).num_present
        except grpc.RpcError as error:
            log.warning("backing lookup failed: %s", error.code())
            return 0

    def close(self) -> None:
        self.client.close()
