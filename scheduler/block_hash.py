"""Content keys of full KV blocks: a SHA-256 chain bound to a namespace.

    key_0 = H(namespace, b"",    tokens[0:bs])
    key_i = H(namespace, key_i-1, tokens[i*bs:(i+1)*bs])

Equal keys mean equal KV bytes, so the namespace binds everything besides the tokens that
changes the bytes (model identity, KV dtype, page shape) plus the request's cache_salt, which
keeps tenants apart. SHA-256, never Python's `hash()`: keys must be stable across processes
and restarts (a kvstore shares them between instances).
"""
from __future__ import annotations

import hashlib
import sys
from array import array
from typing import Sequence


def make_namespace(model_id: str, kv_dtype: str, page_shape: Sequence[int], cache_salt: str) -> bytes:
    """The 32-byte namespace of every key of one (model, KV layout, salt)."""
    text = "\x00".join([model_id, kv_dtype, ",".join(map(str, page_shape)), cache_salt])
    return hashlib.sha256(text.encode()).digest()


def block_key(namespace: bytes, parent_key: bytes | None, token_ids: Sequence[int]) -> bytes:
    """Key of one full block whose predecessor has `parent_key` (None for the first block)."""
    digest = hashlib.sha256(namespace)
    digest.update(parent_key or b"\x00" * 32)
    tokens = array("I", token_ids)
    if sys.byteorder == "big":  # keys are little-endian everywhere, so hosts can share pages
        tokens.byteswap()
    digest.update(tokens.tobytes())
    return digest.digest()


def extend_keys(keys: list[bytes], namespace: bytes, token_ids: Sequence[int], block_size: int,
                num_blocks: int) -> None:
    """Append keys to `keys` (in place) until it covers `num_blocks` full blocks of token_ids.

    Precondition: token_ids holds at least num_blocks * block_size tokens and `keys` are the
    keys of its leading blocks.
    """
    for index in range(len(keys), num_blocks):
        parent = keys[index - 1] if index else None
        keys.append(block_key(namespace, parent, token_ids[index * block_size:(index + 1) * block_size]))
