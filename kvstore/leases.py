"""Leases: what a client holds between Prepare* and Complete*, reclaimed after a TTL."""
import enum
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from kvstore.errors import LeaseNotFound
from kvstore.index import Entry


class LeaseKind(enum.Enum):
    STORE = "store"  # entries are WRITING; expiry rolls them back
    LOAD = "load"  # entries are pinned; expiry unpins them


@dataclass(slots=True)
class Lease:
    lease_id: int
    kind: LeaseKind
    deadline: float
    entries: list[Entry] = field(default_factory=list)


class LeaseTable:
    """Lease ids start at 1 and are never reused within a process."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.leases: dict[int, Lease] = {}
        self.next_id = 1
        self.num_expired = 0

    def __len__(self) -> int:
        return len(self.leases)

    def __iter__(self) -> Iterator[Lease]:
        return iter(self.leases.values())

    def open(self, kind: LeaseKind) -> Lease:
        lease = Lease(self.next_id, kind, time.monotonic() + self.ttl_s)
        self.next_id += 1
        self.leases[lease.lease_id] = lease
        return lease

    def close(self, lease_id: int, kind: LeaseKind) -> Lease:
        """Remove and return the lease. Raises LeaseNotFound if it is unknown, expired or of the
        other kind."""
        lease = self.leases.get(lease_id)
        if lease is None or lease.kind is not kind:
            raise LeaseNotFound(f"{kind.value} lease {lease_id} is unknown or expired (TTL "
                                f"{self.ttl_s} s): prepare again")
        del self.leases[lease_id]
        return lease

    def pop_expired(self) -> list[Lease]:
        now = time.monotonic()
        expired = [lease for lease in self.leases.values() if lease.deadline <= now]
        for lease in expired:
            del self.leases[lease.lease_id]
        self.num_expired += len(expired)
        return expired
