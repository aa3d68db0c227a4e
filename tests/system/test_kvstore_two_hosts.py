"""Two hosts: two network namespaces joined by a veth pair (10.213.7.1/24 <-> 10.213.7.2/24,
only between the namespaces this test creates), a kvstore in each, A backed by B over TLS with a
bearer token. A page stored through one is served by the other; a wrong token is refused."""
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from bench.kvstore_pages import key_of, page_of
from bench.kvstore_process import start_daemon
from internal_token import TOKEN as A_TOKEN, TOKEN_FILE
from kvstore.arena_io import load_pages, map_arena, store_pages
from protos.v1 import kvstore_pb2 as pb
from runtime.kvstore_client import KVStoreClient

pytestmark = pytest.mark.system

PAGE = 65536
ADDRESS_A, ADDRESS_B = "10.213.7.1", "10.213.7.2"
TOKEN = "s3cret-token"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def can_use_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None or shutil.which("openssl") is None:
        return "needs the `ip` and `openssl` commands"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True)
    return None if probe.returncode == 0 else f"`ip netns` unavailable: {probe.stderr!r}"


@pytest.fixture
def hosts():
    reason = can_use_netns()
    if reason:
        pytest.skip(reason)
    tag = f"{os.getpid() % 100000}"
    ns_a, ns_b = f"strata-a-{tag}", f"strata-b-{tag}"
    tmp = tempfile.mkdtemp(prefix="strata-hosts-")
    shm = tempfile.mkdtemp(prefix="strata-hosts-", dir="/dev/shm")
    daemons = []
    try:
        ip("netns", "add", ns_a)
        ip("netns", "add", ns_b)
        ip("link", "add", f"sva{tag}", "type", "veth", "peer", "name", f"svb{tag}")
        for ns, dev, address in ((ns_a, f"sva{tag}", ADDRESS_A), (ns_b, f"svb{tag}", ADDRESS_B)):
            ip("link", "set", dev, "netns", ns)
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem",
                        "-subj", "/CN=strata-kvstore-b",
                        "-addext", f"subjectAltName=IP:{ADDRESS_B}"], check=True,
                       capture_output=True)
        common = ["--ram", "8MiB", "--shm-dir", shm]
        daemons.append(start_daemon(
            [*common, "--listen", f"{ADDRESS_B}:7433", "--listen", f"unix:{tmp}/b.sock",
             "--tls-cert", f"{tmp}/cert.pem", "--tls-key", f"{tmp}/key.pem", "--token", TOKEN],
            prefix_command=["ip", "netns", "exec", ns_b]))
        daemons.append(start_daemon(
            [*common, "--listen", f"unix:{tmp}/a.sock", "--backing", f"{ADDRESS_B}:7433",
             "--backing-ca", f"{tmp}/cert.pem", "--write-through", "--token-file", TOKEN_FILE],
            prefix_command=["ip", "netns", "exec", ns_a],
            env={"STRATA_KVSTORE_BACKING_TOKEN": TOKEN}))
        yield {"tmp": tmp, "ns_a": ns_a}
    finally:
        for daemon in daemons:
            daemon.stop()
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


def wait_for_page(client: KVStoreClient, key: bytes, timeout_s: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pages = dict(client.get_pages([key]))
        if pages:
            return pages
        time.sleep(0.05)
    return {}


def test_page_stored_on_one_host_is_served_by_the_other(hosts):
    tmp = hosts["tmp"]
    host_a = KVStoreClient(f"unix:{tmp}/a.sock", token=A_TOKEN)
    host_b = KVStoreClient(f"unix:{tmp}/b.sock", token=TOKEN)
    layout = host_a.register("two-hosts", PAGE)
    arena = map_arena(layout)
    stored_on_a, stored_on_b = key_of("via-a"), key_of("via-b")
    # A -> B: stored through A's arena, written through to B over TLS.
    store_pages(host_a, arena, layout, [(stored_on_a, page_of(stored_on_a, PAGE))])
    assert wait_for_page(host_b, stored_on_a) == {stored_on_a: page_of(stored_on_a, PAGE)}
    # B -> A: put into B, then A finds it remote and promotes it into its arena.
    assert host_b.put_pages([(stored_on_b, page_of(stored_on_b, PAGE))]) == 1
    assert host_a.lookup("two-hosts", [stored_on_b]).tiers == [pb.TIER_REMOTE]
    assert load_pages(host_a, arena, layout, [stored_on_b]) == [page_of(stored_on_b, PAGE)]
    assert host_a.lookup("two-hosts", [stored_on_b]).tiers == [pb.TIER_RAM]
    remote = host_a.stats().tiers[-1]
    assert remote.tier == pb.TIER_REMOTE and remote.num_hits == 1 and remote.bytes_in == PAGE
    arena.close()


PROBE = """
import sys, grpc
from runtime.kvstore_client import KVStoreClient
client = KVStoreClient(sys.argv[1], token=sys.argv[2], ca_pem=open(sys.argv[3], "rb").read())
try:
    client.lookup("", [bytes(32)])
    print("OK")
except grpc.RpcError as error:
    print(error.code().name)
"""


def test_wrong_token_across_hosts_is_unauthenticated(hosts):
    tmp, ns_a = hosts["tmp"], hosts["ns_a"]

    def probe(token: str) -> str:
        result = subprocess.run(["ip", "netns", "exec", ns_a, sys.executable, "-c", PROBE,
                                 f"{ADDRESS_B}:7433", token, f"{tmp}/cert.pem"],
                                capture_output=True, text=True, timeout=60)
        return result.stdout.strip()
    assert probe("wrong-token") == "UNAUTHENTICATED"
    assert probe(TOKEN) == "OK"
    with pytest.raises(Exception) as error:
        KVStoreClient(f"unix:{tmp}/b.sock").stats()
    assert error.value.code().name == "UNAUTHENTICATED"
