"""`strata gateway`: serve the OpenAI-compatible HTTP API in front of a running scheduler.

    strata gateway --scheduler 127.0.0.1:50051 --host 127.0.0.1 --port 8000 [--api-key K]
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from runtime.logs import configure_logging

log = logging.getLogger("strata.gateway")
GRACE_SECONDS = 5
SCHEDULER_KEY_ENV = "STRATA_SCHEDULER_API_KEY"   # `strata up` sets it for its gateway child


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="strata gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", default="127.0.0.1:50051", help="the scheduler's public address")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None,
                        help="require `Authorization: Bearer KEY` on /v1/*, /tokenize and /detokenize "
                             "(default: $STRATA_API_KEY; none: open)")
    parser.add_argument("--model-name", default=None,
                        help="the model name clients send and /v1/models lists (default: the model id)")
    parser.add_argument("--scheduler-api-key", default=None,
                        help="key the scheduler's public API requires, sent on every call (default: "
                             f"${SCHEDULER_KEY_ENV}, else $STRATA_API_KEY)")
    parser.add_argument("--scheduler-tls-ca", default=None,
                        help="PEM root certificate: reach the scheduler over TLS (its --tls-cert when self-signed)")
    args = parser.parse_args(argv)
    args.api_key = args.api_key or os.environ.get("STRATA_API_KEY") or None
    args.scheduler_api_key = (args.scheduler_api_key or os.environ.get(SCHEDULER_KEY_ENV)
                              or os.environ.get("STRATA_API_KEY") or None)
    return args


def main(argv: list[str]) -> int:
    import uvicorn

    from strata.gateway.app import GatewayConfig, create_app
    from strata.public_channel import read_pem

    configure_logging()
    args = parse_args(argv)
    app = create_app(GatewayConfig(args.scheduler, args.api_key, args.model_name, args.scheduler_api_key,
                                   read_pem(args.scheduler_tls_ca)))
    if args.api_key is None and not is_loopback(args.host):
        log.warning("serving %s without an API key: anyone who reaches it can generate "
                    "(set --api-key or STRATA_API_KEY)", args.host)
    log.info("gateway on http://%s:%d -> scheduler %s", args.host, args.port, args.scheduler)
    # SIGTERM: open streams get GRACE_SECONDS to end (as the scheduler's drain), then close.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=GRACE_SECONDS)
    return 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
