"""A port that a Strata server already serves is refused with a clear error, never shared."""
import subprocess
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import STRATA, child_env, free_port, stop_processes

from protos.listen import SERVER_OPTIONS, bind


def test_bind_refuses_an_address_in_use_and_a_missing_socket_directory(tmp_path):
    first = grpc.server(futures.ThreadPoolExecutor(1), options=SERVER_OPTIONS)
    port = bind(first, "127.0.0.1:0")
    first.start()
    try:
        second = grpc.server(futures.ThreadPoolExecutor(1), options=SERVER_OPTIONS)
        with pytest.raises(SystemExit, match=f"cannot listen on 127.0.0.1:{port}: the address is in use"):
            bind(second, f"127.0.0.1:{port}")
        with pytest.raises(SystemExit, match="its directory must exist"):
            bind(second, f"unix:{tmp_path}/missing/dir/x.sock")
    finally:
        first.stop(0)


def is_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_second_kvstore_on_the_same_port_exits_and_the_first_keeps_serving(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    argv = ["kvstore", "--listen", address, "--ram", "16MiB", "--shm-dir", str(tmp_path)]
    first = subprocess.Popen(STRATA + argv, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        assert is_serving(address)
        second = subprocess.run(STRATA + argv, env=child_env(), capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        assert f"cannot listen on {address}: the address is in use" in second.stderr + second.stdout
        assert is_serving(address) and first.poll() is None
    finally:
        stop_processes([first], grace_s=10)
