"""`strata metrics`: print a running server's Prometheus metrics (Generation.GetMetrics)."""
from __future__ import annotations

import argparse
import sys

import grpc

from protos.v1 import generation_pb2, generation_pb2_grpc


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="strata metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.server) as channel:
        try:
            reply = generation_pb2_grpc.GenerationStub(channel).GetMetrics(
                generation_pb2.GetMetricsRequest(), timeout=10)
        except grpc.RpcError as error:
            print(f"strata metrics: {args.server}: {error.code().name}: {error.details()}",
                  file=sys.stderr)
            return 1
    sys.stdout.write(reply.text)
    return 0
