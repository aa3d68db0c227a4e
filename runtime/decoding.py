"""Requests the protobuf runtime cannot decode get INVALID_ARGUMENT naming the field.

gRPC's Python server decodes a request before any handler runs, and a decoding error (most
often a proto3 `string` field holding bytes that are not UTF-8) becomes INTERNAL "Exception
deserializing request!", which reads like a server bug and names nothing. `DecodeErrorInterceptor`
wraps every handler the generated code registered: its deserializer returns an
`UndecodableRequest` instead of raising, and its behaviour aborts with INVALID_ARGUMENT when
given one. Being an interceptor, it covers every RPC of the service (Generate, Tokenize and any
added later) without duplicating the generated method table.
"""
from __future__ import annotations

import itertools
from typing import Callable, NamedTuple

import grpc
from google.protobuf import descriptor as protobuf_descriptor
from google.protobuf.message import DecodeError

from runtime.errors import handler_kind

WIRE_VARINT, WIRE_FIXED64, WIRE_LENGTH_DELIMITED, WIRE_FIXED32 = 0, 1, 2, 5
# Fields read before giving up on naming the bad one: a GenerateRequest within the caps has a few
# hundred, and this walk is pure Python, so a 4 MiB message of tiny fields must not cost seconds.
MAX_FIELDS_WALKED = 10_000


class UndecodableRequest(NamedTuple):
    message: str


def find_bad_utf8(message_type: protobuf_descriptor.Descriptor, data: bytes) -> str | None:
    """'stopping.stop[2] is not valid UTF-8 (byte 0xff at 5)' for the first string field of `data`
    (recursing into message fields) that is not UTF-8; None when every one is, or when `data` is
    not a well-formed message at all (or has more than MAX_FIELDS_WALKED fields)."""
    try:
        return _find_bad_utf8(message_type, data, "", itertools.repeat(None, MAX_FIELDS_WALKED))
    except (IndexError, StopIteration):   # truncated wire data, or too many fields
        return None


def _find_bad_utf8(message_type, data: bytes, prefix: str, budget) -> str | None:
    position, num_seen = 0, {}
    while position < len(data):
        next(budget)
        key, position = read_varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == WIRE_VARINT:
            _, position = read_varint(data, position)
        elif wire_type in (WIRE_FIXED64, WIRE_FIXED32):
            position += 8 if wire_type == WIRE_FIXED64 else 4
        elif wire_type == WIRE_LENGTH_DELIMITED:
            length, position = read_varint(data, position)
            if position + length > len(data):
                return None
            value, position = data[position:position + length], position + length
            field = message_type.fields_by_number.get(number)
            if field is None:
                continue
            index = num_seen[number] = num_seen.get(number, -1) + 1
            name = prefix + field.name + (f"[{index}]" if is_repeated(field) else "")
            if field.type == field.TYPE_STRING:
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError as error:
                    return (f"{name} is not valid UTF-8 (byte 0x{value[error.start]:02x} at "
                            f"{error.start})")
            elif field.type == field.TYPE_MESSAGE:
                found = _find_bad_utf8(field.message_type, value, name + ".", budget)
                if found is not None:
                    return found
        else:
            return None   # groups (unused in proto3) or a malformed key
    return None


def is_repeated(field: protobuf_descriptor.FieldDescriptor) -> bool:
    # protobuf 7 dropped `label`; `is_repeated` exists only from 6.31 (we support >= 5.27).
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == field.LABEL_REPEATED


def read_varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def tolerant_deserializer(deserialize: Callable[[bytes], object],
                          message_type: protobuf_descriptor.Descriptor) -> Callable[[bytes], object]:
    def deserializer(data: bytes):
        try:
            return deserialize(data)
        except DecodeError as error:
            found = find_bad_utf8(message_type, data)
            if found is not None:
                return UndecodableRequest(f"{found}: string fields must be UTF-8 encoded (send "
                                          "arbitrary bytes as token ids)")
            return UndecodableRequest(f"the request is not a valid {message_type.full_name}: {error}")
    return deserializer


def refusing_undecodable(behaviour: Callable) -> Callable:
    def wrapper(request, context):
        if isinstance(request, UndecodableRequest):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return behaviour(request, context)
    return wrapper


class DecodeErrorInterceptor(grpc.ServerInterceptor):
    """For the unary-request RPCs of `service` (a ServiceDescriptor); other services pass through."""

    def __init__(self, service: protobuf_descriptor.ServiceDescriptor):
        self.input_types = {f"/{service.full_name}/{method.name}": method.input_type
                            for method in service.methods}

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        message_type = self.input_types.get(handler_call_details.method)
        if handler is None or message_type is None or handler.request_streaming:
            return handler
        kind = handler_kind(handler)
        return handler._replace(
            request_deserializer=tolerant_deserializer(handler.request_deserializer, message_type),
            **{kind: refusing_undecodable(getattr(handler, kind))})
