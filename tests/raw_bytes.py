"""Serialized requests carrying bytes that are not UTF-8 in a string field (protobuf's Python
API refuses to build such a message, so the bytes are swapped in after serializing)."""


def with_raw_bytes(message, placeholder: str, raw: bytes) -> bytes:
    """`message` serialized, with the UTF-8 of `placeholder` swapped for `raw` (same length)."""
    encoded = placeholder.encode()
    assert len(raw) == len(encoded)
    data = message.SerializeToString()
    assert data.count(encoded) == 1
    return data.replace(encoded, raw)
