"""The remote path: whole pages as bytes (PutPages / GetPages), used between kvstores.

Local clients never move bytes this way: they use the shared-memory arena."""
from collections.abc import Iterable, Iterator

from kvstore.disk import CorruptPage
from kvstore.errors import InvalidArgument
from kvstore.index import KEY_BYTES
from kvstore.tiers import Tier, Tiers


def check_keys(keys: list[bytes]) -> None:
    for position, key in enumerate(keys):
        if len(key) != KEY_BYTES:
            raise InvalidArgument(f"key {position} has {len(key)} bytes: keys are 32-byte "
                                  "SHA-256 digests")


class RemotePages(Tiers):
    """Mixed into Store, which provides `config` and `_after_publish`."""

    def put_pages(self, pages: Iterable[tuple[bytes, bytes]]) -> tuple[int, int]:
        """Store whole pages (the remote path). Returns (num_stored, num_present)."""
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
                entry = self._insert_page(key, data)
                num_stored += entry is not None
                if entry is not None:
                    entry.num_pins += 1
            if entry is not None:
                self._after_publish([entry])
        return num_stored, num_present

    def get_pages(self, keys: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, bytes) of the present pages: local ones in request order, then the ones
        this store's backing holds. Pages are read without the lock (pinned meanwhile)."""
        check_keys(keys)
        missing = []
        for key in keys:
            data = self._read_page(key)
            if data is None:
                missing.append(key)
            else:
                yield key, data
        if missing and self.backing is not None:
            for key, data in self._fetch_backing(missing).items():
                with self.lock:
                    self.counters[Tier.REMOTE].num_hits += 1
                    self.counters[Tier.REMOTE].bytes_out += len(data)
                yield key, data

    def _read_page(self, key: bytes) -> bytes | None:
        with self.lock:
            entry = self._wait_promoted(key)
            if entry is None or not entry.is_visible:
                self.counters[Tier.RAM].num_misses += 1
                return None
            entry.num_pins += 1
            self.index.touch(entry)
            slot = entry.ram_slot
        data, error = None, None
        try:
            if slot is not None:
                data = bytes(self.ram.arenas[entry.page_bytes].page(slot, entry.page_bytes))
            else:
                data = self.io.submit(self.disk.read, key, entry.page_bytes).result()
        except (CorruptPage, FileNotFoundError) as failure:
            error = failure
        with self.lock:
            entry.num_pins -= 1
            tier = Tier.RAM if slot is not None else Tier.DISK
            if error is not None:
                self._forget_bad_disk_copy(entry, error)
                self.counters[Tier.DISK].num_misses += 1
            else:
                self.counters[tier].num_hits += 1
                self.counters[tier].bytes_out += len(data)
            self.lock.notify_all()
        return data
