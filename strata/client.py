"""`strata generate "text"`: stream a completion from a running server to the terminal."""
from __future__ import annotations

import argparse
import sys
import time
from typing import NamedTuple, TextIO

import grpc

from protos.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from strata.public_channel import add_client_flags, open_public_channel

FINISH_NAMES = {generation_pb2.FINISH_REASON_LENGTH: "length", generation_pb2.FINISH_REASON_STOP: "stop",
                generation_pb2.FINISH_REASON_ABORT: "abort"}


class CompletionSummary(NamedTuple):
    num_tokens: int
    finish_reason: str
    num_cached_tokens: int
    seconds: float

    def line(self) -> str:
        rate = self.num_tokens / self.seconds if self.seconds > 0 else 0.0
        return (f"[{self.num_tokens} tokens, finish: {self.finish_reason}, cached: "
                f"{self.num_cached_tokens}, {self.seconds:.2f}s, {rate:.1f} tok/s]")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="strata generate", description=__doc__.splitlines()[0])
    parser.add_argument("text", nargs="?", help="prompt text (or use --tokens)")
    parser.add_argument("--tokens", help="prompt as comma-separated token ids, e.g. 1,2,3")
    add_client_flags(parser)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--min-tokens", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=None, help="0: greedy (default 1.0)")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--priority", type=int, default=0)
    parser.add_argument("--cache-salt", default="")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds")
    args = parser.parse_args(argv)
    if (args.text is None) == (args.tokens is None):
        parser.error("give the prompt as TEXT or as --tokens, not both")
    return args


def build_request(args: argparse.Namespace) -> generation_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams(temperature=args.temperature, top_p=args.top_p,
                                         top_k=args.top_k, seed=args.seed)
    stopping = generation_pb2.StoppingCriteria(max_tokens=args.max_tokens, min_tokens=args.min_tokens,
                                               stop=args.stop, ignore_eos=args.ignore_eos)
    request = generation_pb2.GenerateRequest(sampling=sampling, stopping=stopping,
                                             priority=args.priority, cache_salt=args.cache_salt)
    if args.tokens is not None:
        request.tokens.ids.extend(int(t) for t in args.tokens.split(",") if t.strip())
    else:
        request.text = args.text
    return request


def stream_completion(stub: generation_pb2_grpc.GenerationStub, request: generation_pb2.GenerateRequest,
                      out: TextIO, timeout: float = 300.0) -> CompletionSummary:
    """Write text to `out` as it arrives; return the summary. Raises grpc.RpcError."""
    start = time.perf_counter()
    num_tokens, last = 0, None
    for response in stub.Generate(request, timeout=timeout):
        out.write(response.text)
        out.flush()
        num_tokens += len(response.token_ids)
        last = response
    reason = FINISH_NAMES.get(last.finish_reason, "unknown") if last else "none"
    cached = last.usage.cached_tokens if last else 0
    return CompletionSummary(num_tokens, reason, cached, time.perf_counter() - start)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with open_public_channel(args) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        try:
            summary = stream_completion(stub, build_request(args), sys.stdout, args.timeout)
        except grpc.RpcError as error:
            print(f"\nstrata generate: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(file=sys.stdout)
    print(summary.line(), file=sys.stderr)
    return 0
