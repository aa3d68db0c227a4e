"""A second daemon on an address that a Strata server already serves exits with a clear error,
and the first keeps serving (the address is never shared)."""
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from internal_token import TOKEN_FILE
from servers import STRATA, child_env, free_port, stop_processes

pytestmark = pytest.mark.system


def is_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_second_kvstore_on_the_same_port_exits_and_the_first_keeps_serving(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    argv = ["kvstore", "--listen", address, "--ram", "16MiB", "--shm-dir", str(tmp_path), "--token-file", TOKEN_FILE]
    first = subprocess.Popen(STRATA + argv, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        assert is_serving(address)
        second = subprocess.run(STRATA + argv, env=child_env(), capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        assert f"cannot listen on {address}: the address is in use" in second.stderr + second.stdout
        assert is_serving(address) and first.poll() is None
    finally:
        stop_processes([first], grace_s=10)
