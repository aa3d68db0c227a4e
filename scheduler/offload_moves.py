"""Page moves between the device pool and the kvstore's arena, from queued to reported.

Each move is one block <-> slot copy with a move id unique among moves in flight; its owner is
the load or store it belongs to (a lease), which completes when its last move is reported.

    queued      added, waiting for the next plan (take)
    in flight   taken into a plan; the executor reports it in done_moves / failed_moves (pop)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from protos.v1 import executor_pb2
from scheduler.host_tiers import NO_MOVES, PageMoves
from scheduler.request import Request

WAIT_FOR_MOVES_SECONDS = 0.05


@dataclass(slots=True)
class Loading:
    request: Request
    lease_id: int
    first_index: int            # block table index of the first loaded block
    block_ids: list[int]
    tiers: list[int]
    num_pending: int
    started: float
    sent: float = 0.0           # blocking loads: when the plan carrying them was built
    first_failed: int | None = None
    is_aborted: bool = False
    is_blocking: bool = False   # copied before the forward; the request is already running
    held_block_ids: list[int] = field(default_factory=list)   # an aborted request's whole table


@dataclass(slots=True)
class Storing:
    lease_id: int
    block_ids: list[int]
    keys: list[bytes]
    num_pending: int
    started: float
    is_failed: bool = False


class MoveLedger:
    def __init__(self):
        self.in_flight: dict[int, tuple[Loading | Storing, int]] = {}   # move id -> (owner, index)
        self.queued = PageMoves([], [], [], 0.0)
        self.next_move_id = 1

    @property
    def is_empty(self) -> bool:
        """No move queued or in flight (queued ones are in in_flight already)."""
        return not self.in_flight

    def add(self, moves: list[executor_pb2.PageMove], owner: Loading | Storing,
            block_ids: list[int], slots: list[int], arena_id: str) -> None:
        """Queue one move per (block, slot) of owner onto moves (one of self.queued's lists)."""
        for index, (block_id, slot) in enumerate(zip(block_ids, slots)):
            move_id, self.next_move_id = self.next_move_id, self.next_move_id + 1
            self.in_flight[move_id] = (owner, index)
            moves.append(executor_pb2.PageMove(block_id=block_id, slot=slot, arena_id=arena_id,
                                               move_id=move_id))

    def take(self) -> PageMoves:
        if not self.in_flight:
            return NO_MOVES
        queued = self.queued
        now = time.perf_counter()
        for move in queued.blocking_loads:
            self.in_flight[move.move_id][0].sent = now
        self.queued = PageMoves([], [], [], 0.0)
        return queued._replace(wait_for_moves_s=WAIT_FOR_MOVES_SECONDS)

    def pop(self, move_id: int) -> tuple[Loading | Storing | None, int]:
        """The owner of a reported move and its index there; (None, 0) for a move not in flight
        (reported after a reset)."""
        return self.in_flight.pop(move_id, (None, 0))

    def owners(self) -> list[Loading | Storing]:
        """Each owner with a move in flight, once."""
        return list({id(owner): owner for owner, _ in self.in_flight.values()}.values())

    def clear(self) -> None:
        self.in_flight.clear()
        self.queued = PageMoves([], [], [], 0.0)
