"""Through the real processes: 64 concurrent streams each return exactly what transformers'
`generate` returns for that prompt alone (greedy, ignore_eos), on a tiny Llama and Qwen2."""
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from checkpoints import load_hf_model
from greedy_parity import generate_tokens, hf_greedy
from protos.v1 import generation_pb2
from servers import start_daemons

pytestmark = pytest.mark.system

NUM_STREAMS = 64


def make_cases(vocab_size: int, seed: int):
    rng = random.Random(seed)
    return [([rng.randrange(1, vocab_size) for _ in range(rng.randint(5, 300))], rng.randint(1, 100))
            for _ in range(NUM_STREAMS)]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_concurrent_streams_match_transformers_generate(arch, request):
    model_dir = request.getfixturevalue(f"{arch}_dir")
    model = load_hf_model(model_dir)
    model.generation_config.eos_token_id = None
    cases = make_cases(model.config.vocab_size, seed=len(arch))
    # 512 blocks of 16 hold about 2/3 of the batch at its peak: preemption runs too.
    with start_daemons(model_dir, num_device_blocks=512) as server:
        with ThreadPoolExecutor(NUM_STREAMS) as pool:
            futures = [pool.submit(generate_tokens, server.stub, p, n) for p, n in cases]
            expected = [hf_greedy(model, p, n) for p, n in cases]   # overlaps with serving
            results = [f.result() for f in futures]
        stats = server.stub.GetStats(generation_pb2.GetStatsRequest())
    mismatches = [i for i, ((tokens, _), want) in enumerate(zip(results, expected)) if tokens != want]
    assert not mismatches, f"{len(mismatches)} streams differ, first: {mismatches[0]}: " \
                           f"{results[mismatches[0]][0]} != {expected[mismatches[0]]}"
    assert all(reason == generation_pb2.FINISH_REASON_LENGTH for _, reason in results)
    assert stats.num_finished_requests == NUM_STREAMS
    assert stats.num_free_device_blocks == stats.num_device_blocks
