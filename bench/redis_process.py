"""Private `redis-server` processes (Debian's, or any on PATH) for the Redis backing's tests and
benchmark: one server, or a Redis Cluster of masters, on 127.0.0.1 free ports, no persistence,
started and stopped by PID.

    with redis_server(tmp_dir, password="pw") as server:      # server.url: redis://:pw@127.0.0.1:P
        ...
    with redis_cluster(tmp_dir, 3) as cluster:                # cluster.url: redis://h:p1,h:p2,h:p3
        os.kill(cluster.servers[1].pid, signal.SIGKILL)
"""
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from strata.launcher import free_port
from strata.supervisor import stop_processes

HOST = "127.0.0.1"


def missing_reason() -> str | None:
    """Why these servers cannot start here (None: they can)."""
    for command in ("redis-server", "redis-cli"):
        if shutil.which(command) is None:
            return f"no {command} on PATH (Debian: apt-get install redis-server; ./dev setup does)"
    return None


@dataclass
class RedisServer:
    process: subprocess.Popen
    port: int
    password: str | None = None
    ca_path: str | None = None   # TLS only (rediss://), trusting this certificate

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        scheme = "rediss" if self.ca_path else "redis"
        return f"{scheme}://{':' + self.password + '@' if self.password else ''}{HOST}:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(HOST, self.port, password=self.password, socket_timeout=5,
                           ssl=self.ca_path is not None, ssl_ca_certs=self.ca_path)


@dataclass
class RedisCluster:
    servers: list[RedisServer]

    @property
    def url(self) -> str:
        return "redis://" + ",".join(f"{HOST}:{server.port}" for server in self.servers)


def start_server(directory: Path, *options: str, password: str | None = None,
                 port: int | None = None, tls: tuple[str, str] | None = None) -> RedisServer:
    """A redis-server on `port` (default: a free loopback port) with `options`, TLS only with
    tls=(cert PEM, key PEM); returns once it answers PING."""
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    listen = ["--port", str(port)]
    if tls:
        listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", tls[0],
                  "--tls-key-file", tls[1], "--tls-auth-clients", "no"]
    argv = ["redis-server", *listen, "--bind", HOST, "--save", "", "--appendonly", "no",
            "--dir", str(directory), *options]
    if password:
        argv += ["--requirepass", password]
    log = open(directory / f"redis-{port}.log", "wb")
    server = RedisServer(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), port, password,
                         tls[0] if tls else None)
    deadline = time.monotonic() + 10
    while True:
        try:
            server.client().ping()
            return server
        except redis.ConnectionError:
            if server.process.poll() is not None or time.monotonic() > deadline:
                stop_processes([server.process], grace_s=1)
                raise RuntimeError(f"redis-server did not start: {(directory / f'redis-{port}.log').read_text()}")
            time.sleep(0.05)


@contextlib.contextmanager
def redis_server(directory: Path, *options: str, password: str | None = None,
                 tls: tuple[str, str] | None = None) -> Iterator[RedisServer]:
    server = start_server(directory, *options, password=password, tls=tls)
    try:
        yield server
    finally:
        stop_processes([server.process], grace_s=5)


@contextlib.contextmanager
def redis_cluster(directory: Path, num_masters: int = 3) -> Iterator[RedisCluster]:
    """`num_masters` masters and no replicas (redis-cli --cluster create); a master that dies
    leaves the others serving their slots (cluster-require-full-coverage no)."""
    servers = []
    try:
        for index in range(num_masters):
            servers.append(start_server(directory / f"node{index}", "--cluster-enabled", "yes",
                                        "--cluster-config-file", "nodes.conf",
                                        # the bus port, else port + 10000 (past 65535 for some)
                                        "--cluster-port", str(free_port()),
                                        "--cluster-node-timeout", "2000",
                                        "--cluster-require-full-coverage", "no"))
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"{HOST}:{server.port}" for server in servers),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        wait_cluster_ok(servers[0])
        yield RedisCluster(servers)
    finally:
        stop_processes([server.process for server in servers], grace_s=5)


def wait_cluster_ok(server: RedisServer, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while server.client().cluster("info").get("cluster_state") != "ok":
        if time.monotonic() > deadline:
            raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
        time.sleep(0.1)
