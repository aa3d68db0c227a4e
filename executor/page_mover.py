"""Page copies between mapped kvstore arenas (host shared memory) and the device KV pool.

A page is one contiguous span on both sides (see kv_pool.py), so every move is one copy.
Moves run beside the forward and are reported once, later, as done or failed:

    CPU   a worker thread copies in plan order while the step thread runs the forward
    CUDA  the arena is registered as pinned memory; copies go on a side stream, each with an
          event; a store first waits for the compute stream, so it reads finished blocks

The scheduler guarantees that no request in a forward reads a block whose load is in flight
and that no forward writes a block whose store is in flight; the mover only copies.
"""
from __future__ import annotations

import logging
import mmap
import os
import queue
import threading
from dataclasses import dataclass
from typing import NamedTuple

import torch

from executor.arena_file import map_arena_file
from executor.errors import PlanError
from executor.kv_pool import KVPool
from runtime.arenas import DEFAULT_ARENA_DIR

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MappedArena:
    arena_id: str
    path: str
    slot_bytes: int
    num_slots: int
    tensor: torch.Tensor        # uint8 over the whole file
    mapping: mmap.mmap
    is_pinned: bool


class Move(NamedTuple):
    move_id: int
    is_load: bool               # slot -> block (else block -> slot)
    block_id: int
    arena: MappedArena
    slot: int


class Collected(NamedTuple):
    done: list[int]
    failed: list[int]


class PageMover:
    def __init__(self, pool: KVPool, arena_dir: str = DEFAULT_ARENA_DIR):
        """arena_dir: where the kvstore's arenas are (its --shm-dir); nothing else is mapped."""
        self.pool = pool
        self.arena_dir = arena_dir
        self.pages = pool.tensor.view(pool.num_blocks, -1).view(torch.uint8)  # [blocks, page_bytes]
        self.arenas: dict[str, MappedArena] = {}
        self.is_cuda = pool.device.type == "cuda"
        self.in_flight: set[int] = set()
        self.finished = threading.Condition()
        self.done: list[int] = []
        self.failed: list[int] = []
        self.cuda_pending: list[tuple[int, object]] = []   # (move_id, event), CUDA only
        if self.is_cuda:
            self.stream = torch.cuda.Stream(device=pool.device)
        else:
            self.queue: queue.SimpleQueue[Move | None] = queue.SimpleQueue()
            self.worker = threading.Thread(target=self._work, name="page-mover", daemon=True)
            self.worker.start()

    # ---- arenas --------------------------------------------------------------------------
    @property
    def arena_slots(self) -> dict[str, int]:
        return {arena_id: arena.num_slots for arena_id, arena in self.arenas.items()}

    def map_arena(self, arena_id: str, path: str, slot_bytes: int, num_slots: int) -> bool:
        """Map (or re-map) an arena; returns whether it is pinned. Moves in flight keep the old
        mapping alive through their reference. Only the kvstore's arenas are mapped (arena_file.py)."""
        if not arena_id:
            raise PlanError("arena_id is empty: pass the kvstore's RegisterResponse.arena_id")
        if slot_bytes < self.pool.page_bytes or num_slots == 0:
            raise PlanError(f"arena {arena_id!r}: slot_bytes {slot_bytes} x {num_slots} slots cannot "
                             f"hold pages of {self.pool.page_bytes} bytes: register the executor's "
                             "page_bytes with the kvstore")
        mapping = map_arena_file(path, self.arena_dir, slot_bytes * num_slots)
        tensor = torch.frombuffer(mapping, dtype=torch.uint8)
        is_pinned = self.is_cuda and _pin(tensor)
        old = self.arenas.get(arena_id)
        self.arenas[arena_id] = MappedArena(arena_id, path, slot_bytes, num_slots, tensor, mapping,
                                            is_pinned)
        log.info("mapped arena %s (%s, %d slots of %d bytes%s)", arena_id, path, num_slots,
                 slot_bytes, ", pinned" if is_pinned else "")
        if old is not None:
            self._unpin(old)
        self._forget_removed_arenas()
        return is_pinned

    def _forget_removed_arenas(self) -> None:
        """Drop the mappings of arenas whose file is gone: a restarted kvstore removes its dead
        predecessor's arena and announces a new one, and an unlinked tmpfs file keeps its memory
        as long as it is mapped. A move in flight keeps its arena alive through its reference."""
        for arena_id, arena in list(self.arenas.items()):
            if not os.path.exists(arena.path):
                del self.arenas[arena_id]
                self._unpin(arena)
                log.info("unmapped arena %s: its file %s is gone (its kvstore restarted)", arena_id,
                         arena.path)

    def _unpin(self, arena: MappedArena) -> None:
        if arena.is_pinned and not self.in_flight:
            torch.cuda.cudart().cudaHostUnregister(arena.tensor.data_ptr())

    # ---- moves ---------------------------------------------------------------------------
    def check_ids(self, move_ids) -> str | None:
        """A reason to reject the plan when one of its move ids is still in flight."""
        for move_id in move_ids:
            if move_id in self.in_flight:
                return f"move_id {move_id} is still in flight: move ids must be unique"
        return None

    def submit(self, loads, stores) -> None:
        """Start the plan's moves (PageMove messages, already checked)."""
        moves = [self._move(m, True) for m in loads] + [self._move(m, False) for m in stores]
        if not moves:
            return
        with self.finished:
            self.in_flight.update(move.move_id for move in moves)
        if self.is_cuda:
            self._submit_cuda(moves)
        else:
            for move in moves:
                self.queue.put(move)

    def _move(self, message, is_load: bool) -> Move:
        return Move(message.move_id, is_load, message.block_id, self.arenas[message.arena_id],
                    message.slot)

    def collect(self, wait_s: float = 0.0) -> Collected:
        """Moves finished since the last call; waits up to wait_s for one if none has yet."""
        if self.is_cuda:
            self._poll_cuda()
            if wait_s > 0 and not self.done and self.cuda_pending:
                self.cuda_pending[0][1].synchronize()   # a page copy takes microseconds
                self._poll_cuda()
        with self.finished:
            if wait_s > 0 and not self.done and not self.failed and self.in_flight:
                self.finished.wait_for(lambda: self.done or self.failed, timeout=wait_s)
            collected = Collected(self.done, self.failed)
            self.done, self.failed = [], []
        return collected

    def wait_for(self, move_ids: list[int]) -> None:
        """Block until these moves finished; RuntimeError (the step fails) if one failed."""
        wanted = set(move_ids)
        if self.is_cuda:
            self.stream.synchronize()
            self._poll_cuda()
        with self.finished:
            self.finished.wait_for(lambda: not (wanted & self.in_flight))
            failed = wanted.intersection(self.failed)
        if failed:
            raise RuntimeError(f"blocking page loads {sorted(failed)} failed: the step is not run")

    def drain(self) -> int:
        """Wait for every move in flight, then forget their reports (Reset)."""
        with self.finished:
            num_moves = len(self.in_flight) + len(self.done) + len(self.failed)
        if self.is_cuda:
            self.stream.synchronize()
            self._poll_cuda()
        with self.finished:
            self.finished.wait_for(lambda: not self.in_flight)
            self.done, self.failed = [], []
        return num_moves

    # ---- CPU: one worker thread ----------------------------------------------------------
    def _work(self) -> None:
        while True:
            move = self.queue.get()
            if move is None:
                return
            try:
                host, device = self._views(move)
                (device if move.is_load else host).copy_(host if move.is_load else device)
                is_ok = True
            except Exception:  # noqa: BLE001 - a failed move is reported, the worker lives on
                log.exception("page move %d failed", move.move_id)
                is_ok = False
            self._finish(move.move_id, is_ok)

    def _views(self, move: Move) -> tuple[torch.Tensor, torch.Tensor]:
        start = move.slot * move.arena.slot_bytes
        return move.arena.tensor[start:start + self.pool.page_bytes], self.pages[move.block_id]

    def _finish(self, move_id: int, is_ok: bool) -> None:
        with self.finished:
            self.in_flight.discard(move_id)
            (self.done if is_ok else self.failed).append(move_id)
            self.finished.notify_all()

    # ---- CUDA: a side stream and one event per move --------------------------------------
    def _submit_cuda(self, moves: list[Move]) -> None:
        self.stream.wait_stream(torch.cuda.current_stream(self.pool.device))
        with torch.cuda.stream(self.stream):
            for move in moves:
                host, device = self._views(move)
                (device if move.is_load else host).copy_(host if move.is_load else device,
                                                         non_blocking=move.arena.is_pinned)
                event = torch.cuda.Event()
                event.record(self.stream)
                self.cuda_pending.append((move.move_id, event))

    def _poll_cuda(self) -> None:
        """Move the moves whose events finished to done."""
        with self.finished:
            while self.cuda_pending and self.cuda_pending[0][1].query():
                move_id, _ = self.cuda_pending.pop(0)   # one stream: events finish in order
                self.in_flight.discard(move_id)
                self.done.append(move_id)

    def close(self) -> None:
        if not self.is_cuda:
            self.queue.put(None)


def _pin(tensor: torch.Tensor) -> bool:
    """cudaHostRegister the arena so device copies are asynchronous DMA."""
    try:
        error = torch.cuda.cudart().cudaHostRegister(tensor.data_ptr(), tensor.numel(), 0)
    except Exception as failure:  # noqa: BLE001 - unpinned copies still work, only slower
        log.warning("cannot pin the arena (%s); copies will be synchronous", failure)
        return False
    is_ok = int(getattr(error, "value", error)) == 0
    if not is_ok:
        log.warning("cudaHostRegister returned %s; copies will be synchronous", error)
    return is_ok
