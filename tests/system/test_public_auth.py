"""The scheduler's public port with API keys and TLS, as real processes on a tiny Llama: a call
without a listed key is UNAUTHENTICATED (health is open), a listed key gets the greedy tokens of
an open server, a plain client cannot talk to the TLS port, two keys' salts keep their prefix
caches apart, a non-loopback plain listener is refused, and `strata up` wires the gateway."""
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from unittest import mock

import grpc
import httpx2 as httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from internal_token import TOKEN_FILE
from protos.v1 import generation_pb2, generation_pb2_grpc
from runtime.api_keys import DENIED
from servers import EXACT_DTYPE, STRATA, child_env, free_port, spawn, start_daemons, stop_processes, wait_ready

pytestmark = [pytest.mark.system,
              pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")]

KEYS = "# KEY CACHE_SALT\nk-alice tenant-a\nk-bob tenant-b\n"
PROMPT_IDS = list(range(3, 43))   # 40 tokens: two full blocks of 16 to reuse
HEALTH = "strata.v1.Generation"


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """cert.pem and key.pem for 127.0.0.1 and localhost (the cert is its own root)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    cert, key = make_self_signed_cert(directory)
    (directory / "keys").write_text(KEYS)
    return cert, key, directory / "keys"


@contextlib.contextmanager
def guarded_daemons(model_dir: Path, cert: Path, key: Path, key_file: Path):
    """Executor + scheduler: TLS on 127.0.0.1:PORT, a plain unix socket for the readiness wait,
    the keys of `key_file` on both. Yields (TCP address, unix address, processes)."""
    run_dir = Path(tempfile.mkdtemp(prefix="st"))
    executor, unix, address = f"unix:{run_dir / 'ex.sock'}", f"unix:{run_dir / 's.sock'}", f"127.0.0.1:{free_port()}"
    processes = [spawn(["executor", "--listen", executor, "--model", str(model_dir), "--data-dir",
                        str(run_dir / "data"), "--num-threads", "1", *EXACT_DTYPE, "--num-device-blocks", "128",
                        "--token-file", TOKEN_FILE, "--arena-dir", str(run_dir)], run_dir / "executor.log"),
                 spawn(["scheduler", "--executor", executor, "--listen", address, "--listen", unix,
                        "--internal-token-file", TOKEN_FILE, "--tls-cert", str(cert), "--tls-key", str(key),
                        "--api-key-file", str(key_file)], run_dir / "scheduler.log")]
    try:
        yield address, unix, processes, run_dir
    finally:
        stop_processes(processes[::-1], grace_s=10)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def servers(llama_dir, tls_files):
    """(open server, guarded TLS address, cert PEM): both pairs start at once (2 cores)."""
    cert, key, key_file = tls_files
    with mock.patch.dict(os.environ, {"STRATA_API_KEY": ""}), \
            guarded_daemons(llama_dir, cert, key, key_file) as (address, unix, processes, run_dir), \
            start_daemons(llama_dir, num_device_blocks=128) as open_server:
        wait_ready(unix, processes, run_dir).close()
        yield open_server, address, cert.read_bytes()


def tls_stub(address: str, cert_pem: bytes) -> generation_pb2_grpc.GenerationStub:
    channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=cert_pem))
    return generation_pb2_grpc.GenerationStub(channel)


def greedy(stub, key: str | None = None, max_tokens: int = 8) -> tuple[list[int], int]:
    """(the tokens, the cached prompt tokens) of a greedy Generate of PROMPT_IDS."""
    request = generation_pb2.GenerateRequest(tokens=generation_pb2.TokenIds(ids=PROMPT_IDS))
    request.sampling.temperature = 0.0
    request.stopping.max_tokens = max_tokens
    request.stopping.ignore_eos = True
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    tokens, cached = [], 0
    for response in stub.Generate(request, metadata=metadata, timeout=60):
        tokens += response.token_ids
        cached = response.usage.cached_tokens or cached
    return tokens, cached


@pytest.mark.parametrize("key", [None, "k-mallory"])
def test_no_key_or_a_wrong_key_is_unauthenticated_with_what_to_send(servers, key):
    _, address, cert_pem = servers
    with pytest.raises(grpc.RpcError) as error:
        greedy(tls_stub(address, cert_pem), key)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.value.details() == DENIED


def test_a_listed_key_over_tls_gets_the_open_servers_greedy_tokens_and_health_needs_no_key(servers):
    open_server, address, cert_pem = servers
    expected, _ = greedy(open_server.stub)
    assert len(expected) == 8
    assert greedy(tls_stub(address, cert_pem), "k-alice")[0] == expected
    channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=cert_pem))
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=HEALTH), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_plain_client_cannot_reach_the_tls_port(servers):
    _, address, _ = servers
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as error:
        generation_pb2_grpc.GenerationStub(channel).GetModelInfo(
            generation_pb2.GetModelInfoRequest(), metadata=(("authorization", "Bearer k-alice"),), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_two_keys_with_their_own_salts_do_not_share_a_prefix_cache(servers):
    _, address, cert_pem = servers
    stub = tls_stub(address, cert_pem)
    first, cached_first = greedy(stub, "k-alice", max_tokens=2)
    other, cached_other = greedy(stub, "k-bob", max_tokens=2)
    again, cached_again = greedy(stub, "k-alice", max_tokens=2)
    assert first == other == again
    assert (cached_other, cached_again) == (0, 32)   # bob misses alice's two blocks; alice hits them
    assert cached_first in (0, 32)   # 32 when an earlier test of this module ran alice's prompt


def test_the_scheduler_refuses_a_non_loopback_plain_listener_before_it_starts():
    result = subprocess.run([*STRATA, "scheduler", "--executor", "unix:/nonexistent/ex.sock",
                             "--listen", f"0.0.0.0:{free_port()}"],
                            capture_output=True, text=True, timeout=30, env=child_env())
    assert result.returncode != 0
    assert ("refusing plain TCP on 0.0.0.0:" in result.stderr
            and "give --tls-cert PEM --tls-key PEM (or --insecure to serve plain TCP to other hosts)" in result.stderr)


def wait_tls_ready(address: str, cert_pem: bytes, process: subprocess.Popen, log: Path, timeout_s=120) -> None:
    channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=cert_pem))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        with contextlib.suppress(grpc.RpcError):
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=HEALTH), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        time.sleep(0.3)
    raise TimeoutError(log.read_text())


def test_up_serves_tls_with_keys_and_its_gateway_reaches_the_scheduler_with_the_files_first_key(
        llama_dir, tls_files, tmp_path):
    cert, key, key_file = tls_files
    port, http_port = free_port(), free_port()
    with mock.patch.dict(os.environ, {"STRATA_API_KEY": ""}):
        process = spawn(["up", "--model", str(llama_dir), "--port", str(port), "--http-port", str(http_port),
                         "--no-kvstore", "--num-device-blocks", "128", *EXACT_DTYPE, "--data-dir",
                         str(tmp_path / "data"), "--tls-cert", str(cert), "--tls-key", str(key),
                         "--api-key-file", str(key_file)], tmp_path / "up.log")
    try:
        wait_tls_ready(f"127.0.0.1:{port}", cert.read_bytes(), process, tmp_path / "up.log")
        assert len(greedy(tls_stub(f"127.0.0.1:{port}", cert.read_bytes()), "k-bob")[0]) == 8
        deadline = time.monotonic() + 60
        while httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=1).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        reply = httpx.post(f"http://127.0.0.1:{http_port}/v1/completions", timeout=60,
                           json={"prompt": PROMPT_IDS, "max_tokens": 4, "temperature": 0})
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 4
    finally:
        stop_processes([process], grace_s=30)


def test_up_refuses_a_non_loopback_host_without_tls_before_any_child_starts(tmp_path):
    result = subprocess.run([*STRATA, "up", "--host", "0.0.0.0", "--port", str(free_port()), "--http-port", "0",
                             "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                            env=child_env())
    assert result.returncode != 0 and not (tmp_path / "logs").exists()
    assert "refusing plain TCP on 0.0.0.0:" in result.stderr and "--insecure" in result.stderr


def test_strata_generate_reaches_the_tls_port_with_tls_ca_and_api_key(servers, tls_files):
    _, address, _ = servers
    command = [*STRATA, "generate", "--tokens", ",".join(map(str, PROMPT_IDS)), "--server", address,
               "--tls-ca", str(tls_files[0]), "--temperature", "0", "--max-tokens", "4", "--ignore-eos"]
    env = dict(child_env(), STRATA_API_KEY="")
    with_key = subprocess.run([*command, "--api-key", "k-alice"], capture_output=True, text=True, timeout=60, env=env)
    assert with_key.returncode == 0 and "[4 tokens, finish: length" in with_key.stderr, with_key.stderr
    without = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert without.returncode == 1 and f"UNAUTHENTICATED: {DENIED}" in without.stderr
