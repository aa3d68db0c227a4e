"""How much requests with many long stop strings slow down an unrelated request.

    python -m bench.stop_strings_load --model DIR [--num-loaders 4] [--num-repeats 5]
        [--num-stop-strings 64] [--stop-string-chars 256] [-- STRATA_UP_ARGS...]

Launches `strata up --model DIR --no-kvstore` (bench/launch.py), then times one greedy
100-token request (ignore_eos, token-id prompt) end to end: alone, while --num-loaders requests
without stop strings stream (the cost of sharing the batch), and while as many requests with
--num-stop-strings stop strings of --stop-string-chars characters each stream (by default the
most the server accepts; none of them ever matches, so every one is searched after every
token). Loaders are resubmitted until the timing ends. Prints the median latencies and their
ratios, and checks the timed request's tokens are the same under load. With more stop strings
than the server's cap it reports the refusal instead. Not a test: a figure for the issue.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import grpc

from bench.launch import ServerProcess
from protos.v1 import common_pb2, generation_pb2, generation_pb2_grpc

GREEDY = common_pb2.SamplingParams(temperature=0.0)
TIMED_PROMPT = list(range(1, 17))
NUM_TIMED_TOKENS = 100


def timed_request() -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        tokens=generation_pb2.TokenIds(ids=TIMED_PROMPT), sampling=GREEDY,
        stopping=generation_pb2.StoppingCriteria(max_tokens=NUM_TIMED_TOKENS, ignore_eos=True))


def loader_request(index: int, stop: list[str], max_tokens: int) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        tokens=generation_pb2.TokenIds(ids=[20 + index, 21, 22, 23]), sampling=GREEDY,
        stopping=generation_pb2.StoppingCriteria(max_tokens=max_tokens, ignore_eos=True, stop=stop))


def never_matching_stops(num_strings: int, num_chars: int) -> list[str]:
    """Distinct strings of a character the model's byte-level vocabulary cannot spell whole."""
    return [f"{index:08d}".rjust(num_chars, "\u2603") for index in range(num_strings)]


def time_once(stub) -> tuple[float, list[int]]:
    started = time.perf_counter()
    tokens = [t for response in stub.Generate(timed_request(), timeout=600) for t in response.token_ids]
    return time.perf_counter() - started, tokens


def time_many(stub, num_repeats: int) -> tuple[float, list[int]]:
    runs = [time_once(stub) for _ in range(num_repeats)]
    assert all(tokens == runs[0][1] for _, tokens in runs), "greedy tokens differ between runs"
    return statistics.median(seconds for seconds, _ in runs), runs[0][1]


class Loaders:
    """`with Loaders(stub, n, stop, max_tokens):` keeps n streaming requests running."""

    def __init__(self, stub, num_loaders: int, stop: list[str], max_tokens: int):
        self.stub, self.stop, self.max_tokens = stub, stop, max_tokens
        self.is_done = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(num_loaders)]
        self.started = threading.Barrier(num_loaders + 1)

    def _run(self, index: int) -> None:
        is_first = True
        while not self.is_done.is_set():
            call = self.stub.Generate(loader_request(index, self.stop, self.max_tokens), timeout=600)
            for _ in call:
                if is_first:
                    is_first = False
                    self.started.wait()
                if self.is_done.is_set():
                    call.cancel()
                    break

    def __enter__(self) -> "Loaders":
        for thread in self.threads:
            thread.start()
        self.started.wait()   # every loader is streaming before the timing starts
        return self

    def __exit__(self, *exc) -> None:
        self.is_done.set()
        for thread in self.threads:
            thread.join()


def is_refused(stub, stop: list[str]) -> str | None:
    try:
        for _ in stub.Generate(loader_request(0, stop, 4), timeout=600):
            pass
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint dir (python -m bench.make_model DIR --shape tiny)")
    parser.add_argument("--num-loaders", type=int, default=4)
    parser.add_argument("--num-repeats", type=int, default=5, help="timed requests per condition (median)")
    parser.add_argument("--num-stop-strings", type=int, default=64)
    parser.add_argument("--stop-string-chars", type=int, default=256)
    parser.add_argument("server_args", nargs="*", help="more `strata up` flags (after --)")
    args = parser.parse_args(argv)
    stop = never_matching_stops(args.num_stop_strings, args.stop_string_chars)
    with ServerProcess(["--model", args.model, "--no-kvstore", *args.server_args]) as server:
        with grpc.insecure_channel(server.target) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            info = stub.GetModelInfo(generation_pb2.GetModelInfoRequest())
            max_tokens = info.max_model_len - 8
            time_once(stub)   # warm-up
            refusal = is_refused(stub, stop)
            if refusal is not None:
                print(f"{args.num_stop_strings} stop strings of {args.stop_string_chars} chars: refused ({refusal})")
                return 0
            alone, tokens = time_many(stub, args.num_repeats)
            with Loaders(stub, args.num_loaders, [], max_tokens):
                plain, plain_tokens = time_many(stub, args.num_repeats)
            with Loaders(stub, args.num_loaders, stop, max_tokens):
                loaded, loaded_tokens = time_many(stub, args.num_repeats)
    assert plain_tokens == tokens and loaded_tokens == tokens, "greedy tokens changed under load"
    print(f"one greedy {NUM_TIMED_TOKENS}-token request, median of {args.num_repeats}:")
    print(f"  alone                                             {alone * 1e3:8.1f} ms")
    print(f"  + {args.num_loaders} requests, no stop strings                   {plain * 1e3:8.1f} ms"
          f"  ({plain / alone:.2f}x alone)")
    print(f"  + {args.num_loaders} requests, {args.num_stop_strings} stop strings x {args.stop_string_chars} chars each"
          f"  {loaded * 1e3:8.1f} ms  ({loaded / alone:.2f}x alone, {loaded / plain:.2f}x no stop strings)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
