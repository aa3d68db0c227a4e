"""A Store behind real gRPC in the test's process, with a client that maps its arena; keys
unique to one test run. The fixtures that build harnesses are in conftest.py."""
import os
import time

from bench.kvstore_pages import key_of, page_of
from kvstore.arena_io import load_pages, map_arena, store_pages
from kvstore.store import Store
from kvstore_server import serve_in_process
from runtime.kvstore_client import KVStoreClient

PAGE = 4096
NUM_SLOTS = 4


class Harness:
    def __init__(self, store: Store, address: str) -> None:
        self.store = store
        self.server = serve_in_process(store, address)
        self.client = KVStoreClient(address)
        self.layout = self.client.register("model-a", PAGE)
        self.arena = map_arena(self.layout)

    def put(self, *names) -> int:
        keys = [key_of(n) for n in names]
        return store_pages(self.client, self.arena, self.layout,
                           [(k, page_of(k, PAGE)) for k in keys])

    def get(self, *names) -> list[bytes]:
        return load_pages(self.client, self.arena, self.layout, [key_of(n) for n in names])

    def tiers(self, *names) -> list[int]:
        return self.client.lookup("model-a", [key_of(n) for n in names]).tiers

    def close(self) -> None:
        self.client.close()
        self.server.stop(0)
        self.store.check_integrity()
        self.arena.close()
        self.store.close()


def uid(name: str) -> str:
    """Keys unique to one test run: the backing process is shared by the module."""
    return f"{name}-{os.getpid()}-{time.monotonic_ns()}"
