"""Where a Redis/Valkey backing is and how to reach it: the `--backing` URL, parsed and checked,
and the redis-py client it makes (one server, or a Redis Cluster).

    redis://[user:password@]host:port[/db]        one server (a cluster when INFO says so)
    rediss://...                                   TLS (--backing-ca PEM to trust its certificate)
    redis://[user:password@]h1:p1,h2:p2,h3:p3      Redis Cluster from several seed nodes

The password may come from $STRATA_KVSTORE_BACKING_PASSWORD instead of the URL (argv is visible
in `ps`). Clients never retry on their own: a failure goes to the backing's circuit at once.
"""
import os
from dataclasses import dataclass
from urllib.parse import unquote

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import Encoder, PythonRespSerializer
from redis.retry import Retry

PASSWORD_ENV = "STRATA_KVSTORE_BACKING_PASSWORD"
SCHEMES = ("redis://", "rediss://")
LARGE_VALUE_BYTES = 6000   # redis-py's buffer cutoff: larger values are sent from their buffers


class BackingConfigError(ValueError):
    """A --backing flag (or the server's answer to it) the user must change; the message says how."""


@dataclass(slots=True)
class RedisTarget:
    seeds: list[tuple[str, int]]
    username: str | None = None
    password: str | None = None
    db: int = 0
    is_tls: bool = False
    ca_path: str | None = None

    def describe(self) -> str:
        """The URL without its credentials, for logs and errors."""
        scheme = "rediss" if self.is_tls else "redis"
        return f"{scheme}://" + ",".join(f"{host}:{port}" for host, port in self.seeds)


def is_redis_url(backing: str) -> bool:
    return backing.startswith(SCHEMES)


def parse_target(url: str, ca_path: str | None = None) -> RedisTarget:
    """A RedisTarget from a redis:// or rediss:// URL; raises BackingConfigError."""
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    credentials, _, hosts = netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    seeds = [_parse_seed(seed, url) for seed in hosts.split(",")]
    if not path.strip("/").isdigit() and path.strip("/"):
        raise BackingConfigError(f"--backing {_safe(url)}: the path is a database number "
                                 f"(redis://host:port/0), not {path!r}")
    target = RedisTarget(seeds, unquote(username) or None,
                         unquote(password) or os.environ.get(PASSWORD_ENV) or None,
                         int(path.strip("/") or 0), scheme == "rediss", ca_path)
    if ca_path and not target.is_tls:
        raise BackingConfigError("--backing-ca needs a rediss:// URL (TLS); redis:// is plain TCP")
    if ca_path and not os.path.isfile(ca_path):
        raise BackingConfigError(f"--backing-ca {ca_path}: no such file (the CA's PEM certificate)")
    if len(seeds) > 1 and target.db:
        raise BackingConfigError("a Redis Cluster has only database 0: drop the /DB from --backing")
    return target


def _parse_seed(seed: str, url: str) -> tuple[str, int]:
    host, _, port = seed.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BackingConfigError(f"--backing {_safe(url)}: {seed!r} is not HOST:PORT "
                                 "(e.g. redis://cache:6379, or h1:7000,h2:7001 for a cluster)")
    return host, int(port)


def _safe(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


class LargeValues:
    """A connection that sends values over 6,000 bytes from their own buffers (redis-py's
    Python packer; replies are still parsed by hiredis). hiredis' packer first copies a whole
    pipeline into one bytes: measured here, SET NX pipelines of 32 x 1 MiB ran at 0.75 GB/s
    with it, 1.3 without. Single servers only: RedisCluster takes no connection class."""

    def __init__(self, **kwargs) -> None:
        encoder = Encoder(kwargs.get("encoding", "utf-8"), kwargs.get("encoding_errors", "strict"),
                          kwargs.get("decode_responses", False))
        super().__init__(command_packer=PythonRespSerializer(LARGE_VALUE_BYTES, encoder.encode),
                         **kwargs)


class LargeValueConnection(LargeValues, redis.Connection):
    pass


class LargeValueSSLConnection(LargeValues, redis.SSLConnection):
    pass


def connect(target: RedisTarget, timeout_s: float) -> redis.Redis | RedisCluster:
    """A client for one server or a cluster (several seeds, or a seed whose INFO says
    cluster_enabled:1). Raises redis' errors when the server is down or refuses the login."""
    options = dict(username=target.username, password=target.password, socket_timeout=timeout_s,
                   socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
    if len(target.seeds) == 1:
        client = redis.Redis(connection_pool=redis.ConnectionPool(
            connection_class=LargeValueSSLConnection if target.is_tls else LargeValueConnection,
            host=target.seeds[0][0], port=target.seeds[0][1], db=target.db, **options,
            **(dict(ssl_ca_certs=target.ca_path) if target.is_tls else {})))
        if not client.info("cluster").get("cluster_enabled"):
            return client
        client.close()
    nodes = [ClusterNode(host, port) for host, port in target.seeds]
    if target.is_tls:
        options.update(ssl=True, ssl_ca_certs=target.ca_path)
    # Full coverage off: with a master down, keys on the others still hit.
    return RedisCluster(startup_nodes=nodes, require_full_coverage=False, **options)
