"""GenerateRequest validation alone (no tokenizer, no server): sampling bounds and size caps."""
import math

import pytest

from protos.v1 import common_pb2, generation_pb2
from scheduler.errors import InvalidArgument
from scheduler.validation import (MAX_CACHE_SALT_CHARS, MAX_NUM_STOP_STRINGS, MAX_REQUEST_ID_CHARS,
                                  MAX_STOP_STRING_CHARS, check_sampling, check_sizes)

NAN, INF = math.nan, math.inf

BAD_SAMPLING = [
    ({"presence_penalty": NAN}, "sampling.presence_penalty = nan: must be in [-2, 2]"),
    ({"presence_penalty": INF}, "sampling.presence_penalty = inf: must be in [-2, 2]"),
    ({"presence_penalty": -1e30}, "sampling.presence_penalty = -1.0000000150474662e+30: must be in [-2, 2]"),
    ({"presence_penalty": 2.5}, "sampling.presence_penalty = 2.5: must be in [-2, 2]"),
    ({"frequency_penalty": NAN}, "sampling.frequency_penalty = nan: must be in [-2, 2]"),
    ({"frequency_penalty": -INF}, "sampling.frequency_penalty = -inf: must be in [-2, 2]"),
    ({"frequency_penalty": -1e30}, "sampling.frequency_penalty = -1.0000000150474662e+30"),
    ({"repetition_penalty": INF}, "sampling.repetition_penalty = inf: must be > 0 and finite"),
    ({"repetition_penalty": NAN}, "sampling.repetition_penalty = nan: must be > 0 and finite"),
    ({"repetition_penalty": 0.0}, "sampling.repetition_penalty = 0.0: must be > 0"),
    ({"temperature": INF}, "sampling.temperature = inf: must be >= 0 and finite"),
    ({"temperature": NAN}, "sampling.temperature = nan: must be >= 0 and finite"),
    ({"temperature": -0.5}, "sampling.temperature = -0.5: must be >= 0"),
    ({"top_p": NAN}, "sampling.top_p = nan: must be in (0, 1]"),
    ({"top_p": INF}, "sampling.top_p = inf: must be in (0, 1]"),
    ({"min_p": NAN}, "sampling.min_p = nan: must be in [0, 1]"),
    ({"min_p": -INF}, "sampling.min_p = -inf: must be in [0, 1]"),
]


@pytest.mark.parametrize("fields,message", BAD_SAMPLING, ids=[m.split(":")[0] for _, m in BAD_SAMPLING])
def test_out_of_range_sampling_floats_are_refused_naming_field_value_and_range(fields, message):
    with pytest.raises(InvalidArgument) as caught:
        check_sampling(common_pb2.SamplingParams(**fields))
    assert message in caught.value.message


@pytest.mark.parametrize("fields", [
    {}, {"temperature": 0.0}, {"temperature": 1e6}, {"presence_penalty": -2.0, "frequency_penalty": 2.0},
    {"repetition_penalty": 1e-6}, {"repetition_penalty": 1e6}, {"top_p": 1.0, "min_p": 0.0},
    {"min_p": 1.0},
])
def test_values_at_the_edges_of_each_range_pass(fields):
    check_sampling(common_pb2.SamplingParams(**fields))


def request_with(stop=(), **fields):
    return generation_pb2.GenerateRequest(
        tokens=generation_pb2.TokenIds(ids=[1]), stopping=generation_pb2.StoppingCriteria(stop=stop),
        **fields)


OVER_THE_CAPS = [
    (request_with(stop=["x"] * (MAX_NUM_STOP_STRINGS + 1)),
     f"stopping.stop has {MAX_NUM_STOP_STRINGS + 1} strings: at most {MAX_NUM_STOP_STRINGS}"),
    (request_with(stop=["a", "é" * (MAX_STOP_STRING_CHARS + 1)]),
     f"stopping.stop[1] is {MAX_STOP_STRING_CHARS + 1} characters long: at most {MAX_STOP_STRING_CHARS}"),
    (request_with(request_id="r" * (MAX_REQUEST_ID_CHARS + 1)),
     f"request_id is {MAX_REQUEST_ID_CHARS + 1} characters long: at most {MAX_REQUEST_ID_CHARS}"),
    (request_with(cache_salt="s" * (MAX_CACHE_SALT_CHARS + 1)),
     f"cache_salt is {MAX_CACHE_SALT_CHARS + 1} characters long: at most {MAX_CACHE_SALT_CHARS}"),
]


@pytest.mark.parametrize("request_message,message", OVER_THE_CAPS, ids=[m.split(" ")[0] for _, m in OVER_THE_CAPS])
def test_sizes_over_the_caps_are_refused_saying_the_cap(request_message, message):
    with pytest.raises(InvalidArgument) as caught:
        check_sizes(request_message)
    assert message in caught.value.message


def test_sizes_at_the_caps_pass():
    # Characters, not bytes: a cap of 256 lets 256 non-ASCII characters through.
    check_sizes(request_with(stop=["é" * MAX_STOP_STRING_CHARS] * MAX_NUM_STOP_STRINGS,
                             request_id="r" * MAX_REQUEST_ID_CHARS, cache_salt="ß" * MAX_CACHE_SALT_CHARS))
