"""`strata metrics`: print a running server's Prometheus metrics (Generation.GetMetrics)."""
from __future__ import annotations

import argparse
import sys

import grpc

from protos.v1 import generation_pb2, generation_pb2_grpc
from strata.public_channel import add_client_flags, open_public_channel


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="strata metrics", description=__doc__.splitlines()[0])
    add_client_flags(parser)
    args = parser.parse_args(argv)
    with open_public_channel(args) as channel:
        try:
            reply = generation_pb2_grpc.GenerationStub(channel).GetMetrics(
                generation_pb2.GetMetricsRequest(), timeout=10)
        except grpc.RpcError as error:
            print(f"strata metrics: {args.server}: {error.code().name}: {error.details()}",
                  file=sys.stderr)
            return 1
    sys.stdout.write(reply.text)
    return 0
