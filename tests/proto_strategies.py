"""Hypothesis strategies for arbitrary protobuf messages of any type, built from its DESCRIPTOR.

    messages(generation_pb2.GenerateRequest)                     # any GenerateRequest
    messages(executor_pb2.StepPlan, overrides={                  # some fields biased by the caller
        "strata.v1.PageMove.arena_id": st.one_of(field_values("strata.v1.PageMove.arena_id"),
                                                 st.just("arena"))})

Every kind of field is covered:
- integers over the whole range of their width, negative ones for the signed kinds, with the
  bounds and small numbers drawn often (small numbers are the ones that mean something: ids,
  counts, indexes);
- floats and doubles with nan, +-inf, -0.0, the largest and the smallest (subnormal) of their
  width, and arbitrary values of that width;
- bools; strings that are empty, short, long (past the API's 256-character caps), any Unicode
  except lone surrogates (protobuf cannot encode them); bytes that are empty, short, exactly or
  one off `byte_sizes` (32-byte keys, 4096-byte pages);
- enums, numbers the enum does not name included (proto3 enums are open);
- repeated fields of 0..max_repeated elements (halved at each level of nesting), maps, nested
  messages down to max_depth, oneofs with at most one member set (a proto3 `optional` field is
  a oneof of one).

Sizes are bounded (a message is at most a few KiB past its byte fields) so a fuzz run spends its
time in the daemons. `overrides` maps a field's full name to the strategy of its whole value (a
list for a repeated field, a dict for a map).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Mapping

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from runtime.decoding import is_repeated

F = FieldDescriptor
INT_RANGES = {
    F.TYPE_INT32: (-2**31, 2**31 - 1), F.TYPE_SINT32: (-2**31, 2**31 - 1),
    F.TYPE_SFIXED32: (-2**31, 2**31 - 1), F.TYPE_INT64: (-2**63, 2**63 - 1),
    F.TYPE_SINT64: (-2**63, 2**63 - 1), F.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}
FLOAT32_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]
FLOAT32_TINY = struct.unpack("<f", b"\x01\x00\x00\x00")[0]     # the smallest subnormal
SPECIAL_FLOATS = (math.nan, math.inf, -math.inf, -0.0, 0.0, 1.0, -1.0, 0.5)
LONG_STRING_CHARS = (250, 300)


@dataclass(frozen=True, slots=True)
class Sizes:
    max_repeated: int = 6
    max_depth: int = 4
    byte_sizes: tuple[int, ...] = (32, 4096)


def messages(message_type, overrides: Mapping[str, st.SearchStrategy] | None = None,
             sizes: Sizes = Sizes()) -> st.SearchStrategy:
    """Messages of `message_type` (a generated class or a Descriptor)."""
    descriptor = getattr(message_type, "DESCRIPTOR", message_type)
    return _messages(descriptor, dict(overrides or {}), sizes, 0)


def field_values(full_name: str, sizes: Sizes = Sizes()) -> st.SearchStrategy:
    """The default strategy of one field's whole value, for callers that widen it."""
    field = descriptor_pool.Default().FindFieldByName(full_name)
    return _field(field, {}, sizes, 0)


def scalars(field: FieldDescriptor, sizes: Sizes = Sizes()) -> st.SearchStrategy:
    """One value of a scalar or enum field (one element, for a repeated one)."""
    if field.type in INT_RANGES:
        low, high = INT_RANGES[field.type]
        edges = sorted({low, high, 0, 1, low + 1, high - 1, -1 if low else high})
        return st.one_of(st.integers(max(low, -16), 16), st.sampled_from(edges),
                         st.integers(low, high))
    if field.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return _floats(32 if field.type == F.TYPE_FLOAT else 64)
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_STRING:
        return _strings()
    if field.type == F.TYPE_BYTES:
        return _bytes(sizes.byte_sizes)
    if field.type == F.TYPE_ENUM:
        numbers = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-2**31, 2**31 - 1))
    raise TypeError(f"{field.full_name}: no scalar strategy for field type {field.type}")


def _floats(width: int) -> st.SearchStrategy:
    largest, tiniest = (FLOAT32_MAX, FLOAT32_TINY) if width == 32 else (1.7976931348623157e308, 5e-324)
    edges = (*SPECIAL_FLOATS, largest, -largest, tiniest, -tiniest)
    return st.one_of(st.sampled_from(edges), st.floats(width=width))


def _strings() -> st.SearchStrategy:
    # A long string repeats a short drawn one: arbitrary text of that length costs Hypothesis
    # a large share of its input buffer per example.
    long = st.builds(lambda text, length: (text * length)[:length],
                     st.text(min_size=1, max_size=3), st.integers(*LONG_STRING_CHARS))
    return st.one_of(st.just(""), st.text(max_size=12), long)


def _bytes(byte_sizes: tuple[int, ...]) -> st.SearchStrategy:
    lengths = sorted({n + d for n in byte_sizes for d in (-1, 0, 1) if n + d >= 0})
    sized = st.builds(lambda pattern, length: (pattern * (length // len(pattern) + 1))[:length],
                      st.binary(min_size=1, max_size=8), st.sampled_from(lengths))
    return st.one_of(st.just(b""), st.binary(max_size=40), sized)


def is_map(field: FieldDescriptor) -> bool:
    return field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _field(field: FieldDescriptor, overrides: dict, sizes: Sizes, depth: int) -> st.SearchStrategy:
    """The whole value of a field: a scalar or message, a list, or a dict (map)."""
    if field.full_name in overrides:
        return overrides[field.full_name]
    if is_map(field):
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return st.dictionaries(scalars(key, sizes), _single(value, overrides, sizes, depth + 1),
                               max_size=_max_elements(sizes, depth))
    element = _single(field, overrides, sizes, depth)
    if is_repeated(field):
        return st.lists(element, max_size=_max_elements(sizes, depth))
    return element


def _max_elements(sizes: Sizes, depth: int) -> int:
    """max_repeated at the top, halved at each level down: a message stays small."""
    return max(1, sizes.max_repeated >> depth) if depth < sizes.max_depth else 0


def _single(field: FieldDescriptor, overrides: dict, sizes: Sizes, depth: int) -> st.SearchStrategy:
    if field.type != F.TYPE_MESSAGE:
        return scalars(field, sizes)
    if depth >= sizes.max_depth:
        return st.builds(message_factory.GetMessageClass(field.message_type))
    return _messages(field.message_type, overrides, sizes, depth + 1)


def _messages(descriptor: Descriptor, overrides: dict, sizes: Sizes, depth: int) -> st.SearchStrategy:
    """Built eagerly down to max_depth, so that drawing only draws."""
    message_class = message_factory.GetMessageClass(descriptor)
    # At most one member of each oneof (proto3 `optional` fields included); None: unset.
    oneofs = [st.one_of(st.none(), *(st.tuples(st.just(field), _field(field, overrides, sizes, depth))
                                     for field in oneof.fields))
              for oneof in descriptor.oneofs]
    # A singular message field is left unset half the time.
    fields = [st.one_of(st.none(), st.tuples(st.just(field), _field(field, overrides, sizes, depth)))
              if field.type == F.TYPE_MESSAGE and not is_repeated(field)
              else st.tuples(st.just(field), _field(field, overrides, sizes, depth))
              for field in descriptor.fields if field.containing_oneof is None]

    def build(assignments) -> object:
        message = message_class()
        for assignment in assignments:
            if assignment is not None:
                _assign(message, *assignment)
        return message
    return st.tuples(*oneofs, *fields).map(build)


def _assign(message, field: FieldDescriptor, value) -> None:
    target = getattr(message, field.name) if is_repeated(field) or field.type == F.TYPE_MESSAGE else None
    if is_map(field):
        is_message_map = field.message_type.fields_by_name["value"].type == F.TYPE_MESSAGE
        for key, item in value.items():
            if is_message_map:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif is_repeated(field):
        target.extend(value)
    elif field.type == F.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def calls(service, overrides: Mapping[str, st.SearchStrategy] | None = None,
          sizes: Sizes = Sizes()) -> st.SearchStrategy:
    """(method name, request) for every RPC of `service` (a ServiceDescriptor); the request of
    a client-streaming RPC is a list of 0..max_repeated messages."""
    branches = []
    for method in service.methods:
        request = messages(method.input_type, overrides, sizes)
        if method.client_streaming:
            request = st.lists(request, max_size=sizes.max_repeated)
        branches.append(st.tuples(st.just(method.name), request))
    return st.one_of(branches)
