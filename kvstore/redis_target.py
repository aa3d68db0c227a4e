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
from redis.retry import Retry

PASSWORD_ENV = "STRATA_KVSTORE_BACKING_PASSWORD"
SCHEMES = ("redis://", "rediss://")


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


def connect(target: RedisTarget, timeout_s: float) -> redis.Redis | RedisCluster:
    """A client for one server or a cluster (several seeds, or a seed whose INFO says
    cluster_enabled:1). Raises redis' errors when the server is down or refuses the login."""
    options = dict(username=target.username, password=target.password, socket_timeout=timeout_s,
                   socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
    if target.is_tls:
        options.update(ssl=True, ssl_ca_certs=target.ca_path)
    if len(target.seeds) == 1:
        host, port = target.seeds[0]
        client = redis.Redis(host=host, port=port, db=target.db, **options)
        if not client.info("cluster").get("cluster_enabled"):
            return client
        client.close()
    nodes = [ClusterNode(host, port) for host, port in target.seeds]
    # Full coverage off: with a master down, keys on the others still hit.
    return RedisCluster(startup_nodes=nodes, require_full_coverage=False, **options)
