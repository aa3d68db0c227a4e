"""Deterministic kvstore keys and pages for the kvstore's tests and benchmark."""
import hashlib


def key_of(name: str | int) -> bytes:
    return hashlib.sha256(str(name).encode()).digest()


def page_of(key: bytes, page_bytes: int) -> bytes:
    """Bytes that depend on the key, so a page returned under the wrong key is caught."""
    pattern = hashlib.sha256(b"page" + key).digest()
    return (pattern * (page_bytes // len(pattern) + 1))[:page_bytes]
