"""A shared-memory arena of fixed-size page slots, mapped by the kvstore and by its local clients.

    arena file (mode 0600, under /dev/shm)
    +-----------+-----------+-----+---------------+
    | slot 0    | slot 1    | ... | slot n-1      |   slot i at i * slot_bytes
    +-----------+-----------+-----+---------------+
    | page_bytes | pad to 4096 |  so every slot is page aligned (O_DIRECT reads/writes it as is)

No torch here: a slot is a writable memoryview or numpy array; the executor wraps it with
torch.frombuffer and copies a device page into it with one copy.
"""
import mmap
import os

import numpy as np

ALIGN = 4096


def align_up(num_bytes: int, align: int = ALIGN) -> int:
    return (num_bytes + align - 1) // align * align


class Arena:
    def __init__(self, path: str, slot_bytes: int, num_slots: int, fd: int) -> None:
        assert slot_bytes % ALIGN == 0, "slots must be page aligned"
        self.path = path
        self.slot_bytes = slot_bytes
        self.num_slots = num_slots
        self.mm = mmap.mmap(fd, slot_bytes * num_slots, mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE)
        os.close(fd)
        self.view = memoryview(self.mm)
        self.bytes = np.frombuffer(self.mm, dtype=np.uint8)

    @classmethod
    def create(cls, path: str, slot_bytes: int, num_slots: int) -> "Arena":
        """Create a new arena file (fails if it exists), readable and writable by this user only."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, slot_bytes * num_slots)
        return cls(path, slot_bytes, num_slots, fd)

    @classmethod
    def open(cls, path: str, slot_bytes: int, num_slots: int) -> "Arena":
        """Map an arena a kvstore created (what a client does after Register)."""
        return cls(path, slot_bytes, num_slots, os.open(path, os.O_RDWR))

    def slot(self, index: int) -> memoryview:
        """The whole slot (slot_bytes), writable."""
        assert 0 <= index < self.num_slots, f"slot {index} out of range"
        start = index * self.slot_bytes
        return self.view[start:start + self.slot_bytes]

    def page(self, index: int, page_bytes: int) -> memoryview:
        return self.slot(index)[:page_bytes]

    def array(self, index: int, page_bytes: int, dtype: np.dtype = np.uint8) -> np.ndarray:
        """The page in slot `index` as a writable 1-D numpy array of `dtype` (no copy)."""
        start = index * self.slot_bytes
        return self.bytes[start:start + page_bytes].view(dtype)

    def prefault(self, start: int, stop: int) -> None:
        """Touch bytes [start, stop) once: first touch of fresh memory is 5-10x slower than a
        copy into memory already mapped (measured here: 0.7-2.3 vs 8-16 GB/s)."""
        self.bytes[start:stop:mmap.PAGESIZE] = 0

    def release_memory(self, index: int) -> None:
        """Give a free slot's memory back to the system (another arena needs the budget)."""
        self.mm.madvise(mmap.MADV_REMOVE, index * self.slot_bytes, self.slot_bytes)

    def close(self) -> None:
        self.view.release()
        self.bytes = None
        try:
            self.mm.close()
        except BufferError:  # a caller still holds a slot view; the mapping dies with it
            pass

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
