"""Generate when the client is gone before the handler registers its abort callback: gRPC then
refuses the callback (add_callback returns False) and would never call it, so the handler must
abort the request itself instead of generating all of it for nobody."""
from types import SimpleNamespace

from protos.v1 import generation_pb2
from scheduler.service import GenerationService


class GoneContext:
    """A servicer context whose RPC already ended (the client cancelled)."""

    def invocation_metadata(self):
        return ()

    def add_callback(self, callback) -> bool:
        return False   # gRPC: the RPC has terminated, the callback will not run

    def is_active(self) -> bool:
        return False


def test_a_request_whose_client_left_before_the_callback_is_aborted_and_streams_nothing(monkeypatch):
    submitted, aborted = [], []
    stream = SimpleNamespace(responses=lambda is_active: iter(["step 1", "step 2"]))
    service = GenerationService()
    service.engine = SimpleNamespace(submit=lambda request: submitted.append(request) or stream,
                                     abort=aborted.append)
    monkeypatch.setattr(service, "make_request", lambda message, cache_salt: "request r1")
    assert list(service.Generate(generation_pb2.GenerateRequest(), GoneContext())) == []
    assert submitted == aborted == ["request r1"]
