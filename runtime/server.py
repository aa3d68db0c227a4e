"""A daemon's gRPC server: made with the runtime's interceptors, health + reflection, and the
one shutdown order.

    start:    Health(server, "strata.v1.X")   liveness "" SERVING, readiness NOT_SERVING
              add_listeners(...); server.start(); ...load...; health.mark_ready()
    SIGTERM:  drain(server, health, grace_s, close)
              readiness NOT_SERVING -> server.stop(grace_s).wait() -> close()
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runtime.errors import StatusInterceptor
from runtime.listen import SERVER_OPTIONS

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def make_server(num_workers: int, interceptors: Sequence[grpc.ServerInterceptor] = (),
                options: Sequence[tuple] = ()) -> grpc.Server:
    """A thread-pool server (no SO_REUSEPORT). `interceptors` run first (a token check refuses
    before anything else runs); StatusInterceptor wraps every handler last."""
    return grpc.server(ThreadPoolExecutor(max_workers=num_workers),
                       interceptors=[*interceptors, StatusInterceptor()],
                       options=[*options, *SERVER_OPTIONS])


class Health:
    """Serves grpc.health.v1 and reflection on `server`: liveness "" is SERVING from the start,
    readiness `service_name` NOT_SERVING until mark_ready(). Reflection lists the daemon's
    service, health and reflection."""

    def __init__(self, server: grpc.Server, service_name: str) -> None:
        self.service_name = service_name
        self.servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        reflection.enable_server_reflection(
            (service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        self.servicer.set("", SERVING)
        self.servicer.set(service_name, NOT_SERVING)

    def mark_ready(self) -> None:
        self.servicer.set(self.service_name, SERVING)

    def mark_not_ready(self) -> None:
        self.servicer.set(self.service_name, NOT_SERVING)

    def enter_graceful_shutdown(self) -> None:
        """Every name NOT_SERVING for good: later marks are ignored."""
        self.servicer.enter_graceful_shutdown()


def stop_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set (call from the main thread, before anything waits on it)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def drain(server: grpc.Server, health: Health, grace_s: float,
          close: Callable[[], None] = lambda: None) -> None:
    """The shutdown order: NOT_SERVING first (probes and balancers stop sending), then stop the
    server (new calls refused, in-flight ones get `grace_s` seconds), then close() the daemon's
    engine or store, which no RPC uses any more."""
    health.enter_graceful_shutdown()
    server.stop(grace_s).wait()
    close()
