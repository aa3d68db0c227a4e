"""A client's channel to the scheduler's public API: TLS with a given root certificate, and the
API key on every call. Shared by `strata generate` and `strata metrics`.

    add_client_flags(parser)            # --server, --api-key (or $STRATA_API_KEY), --tls-ca PEM
    channel = open_public_channel(args)
"""
from __future__ import annotations

import argparse
import os

import grpc

from runtime.api_keys import KEY_ENV
from runtime.token import with_token


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--api-key", default=None,
                        help=f"key the server requires (default: ${KEY_ENV}); sent as `authorization: Bearer KEY`")
    parser.add_argument("--tls-ca", default=None,
                        help="PEM root certificate: connect over TLS (the server's --tls-cert when self-signed)")


def read_pem(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise SystemExit(f"cannot read the certificate {path}: {error.strerror}") from error


def secure_or_plain(address: str, ca_pem: bytes | None, aio: bool = False):
    """A channel to `address`: TLS trusting `ca_pem` when given, else plain (grpc.aio's with aio)."""
    module = grpc.aio if aio else grpc
    if ca_pem is None:
        return module.insecure_channel(address)
    return module.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca_pem))


def open_public_channel(args: argparse.Namespace) -> grpc.Channel:
    key = args.api_key or os.environ.get(KEY_ENV) or None
    return with_token(secure_or_plain(args.server, read_pem(args.tls_ca)), key)
