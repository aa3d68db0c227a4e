"""A kvstore that cannot take this server's pages is reported at WARNING with its reason, and the
server serves by recompute meanwhile."""
import time

import pytest
from checkpoints import load_hf_model
from servers import start_daemons

from protos.v1 import common_pb2, generation_pb2

pytestmark = pytest.mark.system


def greedy(stub, prompt: list[int], max_tokens: int) -> list[int]:
    request = generation_pb2.GenerateRequest(
        tokens=generation_pb2.TokenIds(ids=prompt), sampling=common_pb2.SamplingParams(temperature=0.0),
        stopping=generation_pb2.StoppingCriteria(max_tokens=max_tokens, ignore_eos=True))
    return [token for response in stub.Generate(request, timeout=120) for token in response.token_ids]


def test_a_ram_tier_smaller_than_one_page_is_a_warning_with_the_fix_and_serving_goes_on(llama_dir):
    import torch

    with start_daemons(llama_dir, kvstore_args=("--ram", "4KiB")) as server:
        prompt = list(range(3, 40))
        with torch.no_grad():
            expected = load_hf_model(llama_dir).generate(
                torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                pad_token_id=0)[0, len(prompt):].tolist()
        assert greedy(server.stub, prompt, 8) == expected
        log_path = server.run_dir / "scheduler.log"
        deadline = time.monotonic() + 10
        while "refused to register" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        warnings = [line for line in log_path.read_text().splitlines() if "refused to register" in line]
        assert len(warnings) == 1 and "WARNING" in warnings[0] and "INVALID_ARGUMENT" in warnings[0]
        assert "raise --ram" in warnings[0]
