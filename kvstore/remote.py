"""The remote path: whole pages as bytes (PutPages / GetPages), for the kvstores above this one.

Local clients never move bytes this way: they use the shared-memory arena."""
import threading
from collections.abc import Callable, Iterable, Iterator

from kvstore.backing import Backing
from kvstore.errors import InvalidArgument
from kvstore.index import Entry, Index, check_keys
from kvstore.tiers import Tiers


class RemotePages:
    def __init__(self, lock: threading.Condition, index: Index, tiers: Tiers,
                 backing: Backing | None, publish: Callable[[list[Entry]], None]) -> None:
        """`publish(entries)`: called unlocked with each stored entry pinned once; it takes the
        pin over (copies the page down if the store writes through, then unpins)."""
        self.lock = lock
        self.index = index
        self.tiers = tiers
        self.backing = backing
        self.publish = publish

    def put_pages(self, pages: Iterable[tuple[bytes, bytes]]) -> tuple[int, int]:
        """Store whole pages. Returns (num_stored, num_present)."""
        num_stored = num_present = 0
        for key, data in pages:
            check_keys([key])
            if not data:
                raise InvalidArgument("a page needs at least one byte")
            with self.lock:
                existing = self.index.get(key)
                if existing is not None:
                    num_present += 1
                    continue
                entry = self.tiers.insert_page(key, data)
                num_stored += entry is not None
                if entry is not None:
                    entry.num_pins += 1
            if entry is not None:
                self.publish([entry])
        return num_stored, num_present

    def get_pages(self, keys: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, bytes) of the present pages: local ones in request order, then the ones
        this store's backing holds. Pages are read without the lock (pinned meanwhile)."""
        check_keys(keys)
        missing = []
        for key in keys:
            data = self.tiers.read_page(key)
            if data is None:
                missing.append(key)
            else:
                yield key, data
        if missing and self.backing is not None:
            for key, data in self.backing.fetch(missing).items():
                self.backing.count_hit(len(data))
                yield key, bytes(data)   # the wire takes bytes, not a view
