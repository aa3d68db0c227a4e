"""PyPI has packages named scheduler, executor, kernels, kvstore and protos; ours must win."""
import importlib
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["scheduler", "kvstore", "executor", "kernels", "protos", "bench",
                                  "runtime"])
def test_package_imports_from_this_repository(name):
    module = importlib.import_module(name)
    assert pathlib.Path(module.__file__).resolve().parent == REPO / name


def test_generated_stubs_import():
    from protos.v1 import executor_pb2_grpc, generation_pb2_grpc  # noqa: F401
    from protos.v1 import generation_pb2

    request = generation_pb2.GenerateRequest(tokens=generation_pb2.TokenIds(ids=[1, 2]))
    assert request.WhichOneof("input") == "tokens"
