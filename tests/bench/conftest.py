"""Fixtures of the bench tests: a scripted Generation server on a free port."""
from concurrent import futures

import grpc
import pytest

from protos.v1 import generation_pb2_grpc
from scripted_generation import ScriptedGeneration


@pytest.fixture
def scripted_server():
    servicer = ScriptedGeneration()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    generation_pb2_grpc.add_GenerationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)
