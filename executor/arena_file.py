"""Which files MapArena maps: only an arena the kvstore created and announced (through the
scheduler, the one caller the internal token lets in). A path is mapped only when it is

    directly inside the arena directory   --arena-dir (the kvstore's --shm-dir), default /dev/shm
    named as the kvstore names arenas     runtime.arenas.ARENA_NAME
    a regular file, not a symlink         opened with O_NOFOLLOW, checked on the open descriptor
    owned by this process's user          the kvstore and the executor run as one user
    exactly slot_bytes x num_slots long   the size the kvstore's RegisterResponse announced

The path is checked before anything outside the arena directory is looked at. As
protos/v1/executor.proto says: a path that is not such an arena (or is missing: the two daemons
do not share the directory) is FAILED_PRECONDITION (ArenaError); a size that disagrees is
INVALID_ARGUMENT (PlanError). Each message names the path and the rule; nothing is mapped.
"""
from __future__ import annotations

import mmap
import os
import stat

from executor.errors import ArenaError, PlanError
from runtime.arenas import ARENA_NAME, ARENA_NAME_FORM

OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def map_arena_file(path: str, arena_dir: str, num_bytes: int) -> mmap.mmap:
    """A shared read-write mapping of the whole arena at `path` (`num_bytes` long)."""
    _check_place(path, arena_dir)
    seen = _lstat(path, arena_dir)
    if stat.S_ISLNK(seen.st_mode):
        raise ArenaError(f"arena {path}: a symlink; the executor maps only the regular files the "
                        "kvstore created, never what a link points to")
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError as error:
        raise ArenaError(f"cannot open arena {path}: {error.strerror}") from error
    try:
        found = os.fstat(fd)
        if (found.st_dev, found.st_ino) != (seen.st_dev, seen.st_ino):
            raise ArenaError(f"arena {path} was replaced while it was checked: map it again")
        _check_file(path, found, num_bytes)
        return mmap.mmap(fd, num_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def _lstat(path: str, arena_dir: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as error:
        raise ArenaError(f"cannot open arena {path}: {error.strerror}; the executor and the kvstore "
                         f"must share {arena_dir} (same host, or ipc: service:kvstore in compose)") from error


def _check_place(path: str, arena_dir: str) -> None:
    """The path alone (nothing outside the arena directory is looked at)."""
    directory, name = os.path.split(path)
    if not os.path.isabs(path) or os.path.realpath(directory) != os.path.realpath(arena_dir):
        raise ArenaError(f"arena {path}: not a file directly inside the arena directory {arena_dir} "
                        "(the executor's --arena-dir, the kvstore's --shm-dir): the executor maps "
                        "only the kvstore's arenas")
    if not ARENA_NAME.fullmatch(name):
        raise ArenaError(f"arena {path}: {name!r} is not the name of a kvstore arena "
                        f"({ARENA_NAME_FORM}): the executor maps only the kvstore's arenas")


def _check_file(path: str, found: os.stat_result, num_bytes: int) -> None:
    if not stat.S_ISREG(found.st_mode):
        raise ArenaError(f"arena {path}: not a regular file; the executor maps only the kvstore's arena files")
    if found.st_uid != os.geteuid():
        raise ArenaError(f"arena {path}: owned by uid {found.st_uid}, not by this executor's uid "
                         f"{os.geteuid()}: run the kvstore and the executor as one user")
    if found.st_size < num_bytes:
        raise PlanError(f"arena {path} holds {found.st_size} bytes, fewer than slot_bytes x num_slots = "
                        f"{num_bytes}: pass the kvstore's RegisterResponse values")
    if found.st_size > num_bytes:
        raise PlanError(f"arena {path} holds {found.st_size} bytes, more than slot_bytes x num_slots = "
                        f"{num_bytes}: pass the kvstore's RegisterResponse values (an arena is "
                        "mapped whole)")
