"""ExecutorLink.wait_until_ready against a real gRPC server on a unix socket that is not there
yet, then is: the link opens a new channel after each attempt that did not connect, and returns
once the server answers Describe."""
import threading
import time
from concurrent import futures

import grpc

from protos.v1 import executor_pb2, executor_pb2_grpc
from scheduler.executor_link import ExecutorLink


class Describer(executor_pb2_grpc.ExecutorServicer):
    def Describe(self, request, context):
        return executor_pb2.DescribeResponse(block_size=16, num_blocks=7)


def serve(target: str) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    executor_pb2_grpc.add_ExecutorServicer_to_server(Describer(), server)
    server.add_insecure_port(target)
    server.start()
    return server


def test_an_unreachable_executor_gets_a_new_channel_per_attempt_and_is_found_once_it_listens(tmp_path):
    target = f"unix:{tmp_path / 'executor.sock'}"
    link = ExecutorLink(target)
    channels = [link.channel]
    ready, is_ready = threading.Event(), []

    def wait() -> None:
        is_ready.append(link.wait_until_ready(max_backoff_s=0.4))
        ready.set()

    threading.Thread(target=wait, daemon=True).start()
    deadline = time.monotonic() + 10
    while len(channels) < 3 and time.monotonic() < deadline:
        if link.channel is not channels[-1]:
            channels.append(link.channel)
        time.sleep(0.01)
    assert len(channels) >= 3, "the link kept its first channel while nothing listened"
    server = serve(target)
    try:
        assert ready.wait(10) and is_ready == [True]
        assert link.describe().num_blocks == 7
    finally:
        link.close()
        server.stop(None)


def test_an_executor_killed_and_started_again_on_the_same_socket_is_found_again(tmp_path):
    target = f"unix:{tmp_path / 'executor.sock'}"
    server = serve(target)
    link = ExecutorLink(target)
    try:
        assert link.wait_until_ready()
        server.stop(None)
        server = serve(target)
        started = time.monotonic()
        assert link.wait_until_ready(max_backoff_s=0.4)
        assert time.monotonic() - started < 10
        assert link.describe().block_size == 16
    finally:
        link.close()
        server.stop(None)


def test_wait_until_ready_returns_false_when_asked_to_stop(tmp_path):
    link = ExecutorLink(f"unix:{tmp_path / 'nothing.sock'}")
    try:
        assert link.wait_until_ready(is_stopping=lambda: True) is False
    finally:
        link.close()


class Loader(executor_pb2_grpc.ExecutorServicer):
    """Answers UNAVAILABLE (loading its model) to its first `loading` Describes."""

    def __init__(self, loading: int) -> None:
        self.loading, self.calls = loading, 0

    def Describe(self, request, context):
        self.calls += 1
        if self.calls <= self.loading:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the executor is still loading its model; retry")
        return executor_pb2.DescribeResponse(block_size=16, num_blocks=9)


def test_a_loading_executor_is_asked_again_every_poll_interval_not_after_a_doubling_wait(tmp_path):
    target = f"unix:{tmp_path / 'executor.sock'}"
    loader = Loader(loading=6)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    executor_pb2_grpc.add_ExecutorServicer_to_server(loader, server)
    server.add_insecure_port(target)
    server.start()
    link = ExecutorLink(target)
    try:
        assert link.wait_until_ready(max_backoff_s=5.0)
        # six refusals at LOADING_POLL_S each; doubling from 0.2 s would have waited 12.6 s
        assert loader.calls == 7 and link.describe().num_blocks == 9
    finally:
        link.close()
        server.stop(None)
