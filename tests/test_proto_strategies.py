"""The message strategy of proto_strategies.py: every field of a type gets a value over a few
hundred examples, with the edge values of each kind, and every message serializes."""
import math

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from hypothesis import given, settings

from proto_strategies import FLOAT32_MAX, FLOAT32_TINY, is_map, is_repeated, messages
from protos.v1 import executor_pb2, generation_pb2, kvstore_pb2

F = descriptor_pb2.FieldDescriptorProto
SCALAR_KINDS = {
    "int32": F.TYPE_INT32, "int64": F.TYPE_INT64, "uint32": F.TYPE_UINT32, "uint64": F.TYPE_UINT64,
    "sint32": F.TYPE_SINT32, "sint64": F.TYPE_SINT64, "fixed32": F.TYPE_FIXED32,
    "fixed64": F.TYPE_FIXED64, "sfixed32": F.TYPE_SFIXED32, "sfixed64": F.TYPE_SFIXED64,
    "float": F.TYPE_FLOAT, "double": F.TYPE_DOUBLE, "bool": F.TYPE_BOOL, "string": F.TYPE_STRING,
    "bytes": F.TYPE_BYTES,
}
EXAMPLES = settings(max_examples=100, derandomize=True, database=None, deadline=None)


def all_kinds_type():
    """A proto3 message with one singular and one repeated field of every scalar kind, an enum,
    a nested message, a repeated message, a map, a oneof and an `optional` field."""
    file = descriptor_pb2.FileDescriptorProto(name="all_kinds.proto", package="fuzztest", syntax="proto3")
    file.enum_type.add(name="Color").value.extend(
        [descriptor_pb2.EnumValueDescriptorProto(name=name, number=n) for n, name in enumerate(["RED", "GREEN"])])
    message = file.message_type.add(name="AllKinds")
    inner = message.nested_type.add(name="Inner")
    inner.field.add(name="count", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    entry = message.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    number = iter(range(1, 100))
    for name, kind in SCALAR_KINDS.items():
        message.field.add(name=f"one_{name}", number=next(number), type=kind, label=F.LABEL_OPTIONAL)
        message.field.add(name=f"many_{name}", number=next(number), type=kind, label=F.LABEL_REPEATED)
    fields = [("color", F.TYPE_ENUM, F.LABEL_OPTIONAL, ".fuzztest.Color"),
              ("colors", F.TYPE_ENUM, F.LABEL_REPEATED, ".fuzztest.Color"),
              ("inner", F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".fuzztest.AllKinds.Inner"),
              ("inners", F.TYPE_MESSAGE, F.LABEL_REPEATED, ".fuzztest.AllKinds.Inner"),
              ("labels", F.TYPE_MESSAGE, F.LABEL_REPEATED, ".fuzztest.AllKinds.LabelsEntry")]
    for name, kind, label, type_name in fields:
        message.field.add(name=name, number=next(number), type=kind, label=label, type_name=type_name)
    message.oneof_decl.add(name="choice")
    message.field.add(name="choice_text", number=next(number), type=F.TYPE_STRING, label=F.LABEL_OPTIONAL,
                      oneof_index=0)
    message.field.add(name="choice_inner", number=next(number), type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                      type_name=".fuzztest.AllKinds.Inner", oneof_index=0)
    message.oneof_decl.add(name="_maybe")   # the synthetic oneof of a proto3 `optional` field
    message.field.add(name="maybe", number=next(number), type=F.TYPE_UINT32, label=F.LABEL_OPTIONAL,
                      oneof_index=1, proto3_optional=True)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool.FindMessageTypeByName("fuzztest.AllKinds")


def reachable_fields(descriptor, seen_types=()) -> set[str]:
    """Full names of every field of the type and of the message types inside it (not map entries)."""
    names = set()
    for field in descriptor.fields:
        names.add(field.full_name)
        nested = field.message_type
        if nested is not None and not nested.GetOptions().map_entry and nested not in seen_types:
            names |= reachable_fields(nested, (*seen_types, descriptor))
    return names


def record(message, values: dict[str, list]) -> None:
    """Every set field of `message` and of its nested messages -> the values it held."""
    for field, value in message.ListFields():
        items = list(value.items()) if is_map(field) else list(value) if is_repeated(field) else [value]
        values.setdefault(field.full_name, []).extend(items)
        for item in items:
            if hasattr(item, "ListFields"):
                record(item, values)


def examples_of(message_type, num_examples: int = 100) -> dict[str, list]:
    values: dict[str, list] = {}

    @settings(EXAMPLES, max_examples=num_examples)
    @given(messages(message_type))
    def draw(message):
        data = message.SerializeToString(deterministic=True)
        assert type(message).FromString(data).SerializeToString(deterministic=True) == data
        record(message, values)
    draw()
    return values


def test_every_field_kind_gets_a_value_and_its_edge_values():
    descriptor = all_kinds_type()
    values = examples_of(message_factory.GetMessageClass(descriptor), 300)
    assert set(values) == reachable_fields(descriptor)
    name = "fuzztest.AllKinds."
    for kind, (low, high) in {"int32": (-2**31, 2**31 - 1), "sint64": (-2**63, 2**63 - 1),
                              "uint64": (1, 2**64 - 1), "fixed32": (1, 2**32 - 1)}.items():
        seen = values[name + f"one_{kind}"] + values[name + f"many_{kind}"]
        assert low in seen and high in seen and any(0 < v < 17 for v in seen), kind
    for kind, (largest, tiniest) in {"float": (FLOAT32_MAX, FLOAT32_TINY),
                                     "double": (1.7976931348623157e308, 5e-324)}.items():
        seen = values[name + f"one_{kind}"] + values[name + f"many_{kind}"]
        assert any(math.isnan(v) for v in seen) and math.inf in seen and -math.inf in seen
        assert largest in seen and tiniest in seen
        assert any(v == 0 and math.copysign(1, v) < 0 for v in values[name + f"many_{kind}"])
    strings = values[name + "many_string"]
    assert "" in strings and any(len(s) >= 250 for s in strings) and any(not s.isascii() for s in strings)
    blobs = values[name + "many_bytes"]
    assert b"" in blobs and {32, 4095, 4096, 4097} <= {len(b) for b in blobs}
    assert set(values[name + "colors"]) - {0, 1}, "an enum number the enum does not name"


def test_repeated_fields_take_zero_to_max_elements():
    counts = set()

    @settings(EXAMPLES, max_examples=300)
    @given(messages(generation_pb2.TokenIds))
    def draw(message):
        counts.add(len(message.ids))
    draw()
    assert counts == set(range(7))


@pytest.mark.parametrize("message_type", [
    generation_pb2.GenerateRequest, generation_pb2.TokenizeRequest, executor_pb2.StepPlan,
    executor_pb2.MapArenaRequest, kvstore_pb2.PrepareStoreRequest, kvstore_pb2.Page,
    kvstore_pb2.StatsResponse, generation_pb2.GenerateResponse],
    ids=lambda t: t.DESCRIPTOR.name)
def test_every_field_of_the_wire_types_gets_a_value(message_type):
    assert set(examples_of(message_type)) == reachable_fields(message_type.DESCRIPTOR)
