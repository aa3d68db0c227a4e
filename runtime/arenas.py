"""The kvstore's shared-memory arena files, named once for the daemon that creates them (the
kvstore's RAM tier) and the one that checks them before it maps one (the executor's MapArena).

    <arena dir>/strata-kv-<kvstore pid>-<8 hex digits>-<page_bytes>     e.g. /dev/shm/strata-kv-41-9f3a0c1e-65536
"""
from __future__ import annotations

import re
import secrets

DEFAULT_ARENA_DIR = "/dev/shm"   # the kvstore's --shm-dir and the executor's --arena-dir
ARENA_NAME = re.compile(r"strata-kv-(\d+)-[0-9a-f]+-\d+")   # group 1: the kvstore's pid
ARENA_NAME_FORM = "strata-kv-PID-TAG-PAGEBYTES"


def new_arena_tag(pid: int) -> str:
    """The prefix of one kvstore process's arena file names (unique per process life)."""
    return f"strata-kv-{pid}-{secrets.token_hex(4)}"


def arena_file_name(tag: str, page_bytes: int) -> str:
    return f"{tag}-{page_bytes}"
