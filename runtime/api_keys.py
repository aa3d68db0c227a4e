"""Public API keys: who may call the scheduler's strata.v1.Generation, and the cache salt that
keeps each caller's prefix cache apart.

The key file (`--api-key-file`): one key a line, optionally followed by whitespace and a cache
salt; blank lines and lines starting with `#` are skipped.

    # KEY                 CACHE_SALT (optional)
    k-alice-7f3c9a        tenant-a
    k-bob-0e11d2          tenant-b
    k-ops-5512aa

$STRATA_API_KEY adds one key without a salt. A caller sends `authorization: Bearer KEY` on every
call but health and reflection (runtime.token's BearerInterceptor), on every listener.
"""
from __future__ import annotations

import hmac
import os
from typing import NamedTuple

import grpc

from runtime.token import BearerInterceptor, authorization

KEY_ENV = "STRATA_API_KEY"
DENIED = ("missing or wrong API key: send the metadata `authorization: Bearer <key>` with a key "
          "of the scheduler's --api-key-file or $STRATA_API_KEY")


class ApiKey(NamedTuple):
    key: str
    cache_salt: str   # "" : the caller shares the server's default prefix cache


def parse_key_lines(text: str, source: str) -> list[ApiKey]:
    """The keys of a key file's text; SystemExit naming `source` and the line when a line has
    more than two fields or a key repeats."""
    keys: dict[str, ApiKey] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            raise SystemExit(f"{source}:{number}: expected `KEY [CACHE_SALT]`, got {len(fields)} fields")
        if fields[0] in keys:
            raise SystemExit(f"{source}:{number}: this key is already on an earlier line")
        keys[fields[0]] = ApiKey(fields[0], fields[1] if len(fields) == 2 else "")
    return list(keys.values())


def read_key_file(path: str | os.PathLike) -> list[ApiKey]:
    """The keys in `path`; SystemExit saying why when it cannot be read or holds none."""
    try:
        with open(path) as file:
            text = file.read()
    except OSError as error:
        raise SystemExit(f"cannot read the API key file {path}: {error.strerror}") from error
    keys = parse_key_lines(text, os.fspath(path))
    if not keys:
        raise SystemExit(f"the API key file {path} holds no key: write one key a line")
    return keys


class ApiKeys:
    """The accepted keys. An empty set means the API is open (no key was configured)."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = [(f"Bearer {key.key}".encode(), key) for key in keys]

    def is_required(self) -> bool:
        return bool(self.keys)

    def find(self, presented: bytes) -> ApiKey | None:
        """The key `presented` (an `authorization` value) names. Every key is compared, each in
        constant time, so the time taken says nothing about which key came close."""
        found = None
        for expected, key in self.keys:
            if hmac.compare_digest(presented, expected):
                found = key
        return found

    def cache_salt(self, metadata, request_salt: str) -> str:
        """The salt a request is hashed under. Without keys: the request's. With keys: the
        caller's key salt, length-prefixed, then the request's, so that no request salt can name
        another key's prefix cache while a request's salt still splits its own key's."""
        if not self.is_required():
            return request_salt
        key = self.find(authorization(metadata))
        key_salt = key.cache_salt if key else ""
        return f"{len(key_salt)}:{key_salt}:{request_salt}"

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        """[the key check] when keys are required, else none."""
        if not self.is_required():
            return []
        return [BearerInterceptor(lambda presented: self.find(presented) is not None, DENIED)]


def load_api_keys(key_file: str | None, env_key: str | None) -> ApiKeys:
    """The keys of `key_file` (when given) plus `env_key` ($STRATA_API_KEY's, when set)."""
    keys = read_key_file(key_file) if key_file else []
    if env_key and env_key.strip() not in {key.key for key in keys}:
        keys.append(ApiKey(env_key.strip(), ""))
    return ApiKeys(keys)

