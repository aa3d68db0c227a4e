"""bind() refuses an address in use and a unix socket in a missing directory with a clear error
(a second daemon on a served address: tests/system/test_address_in_use.py)."""
from concurrent import futures

import grpc
import pytest

from runtime.listen import SERVER_OPTIONS, bind


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
