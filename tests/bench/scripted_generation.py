"""ScriptedGeneration: a fake of strata.v1.Generation, the one component the bench driver talks
to; its answers follow a rule (below), so the load generator is tested without a model."""
import time

from protos.v1 import generation_pb2, generation_pb2_grpc

VOCAB_SIZE = 50
EOS_ID = 0


class ScriptedGeneration(generation_pb2_grpc.GenerationServicer):
    """Streams max_tokens ids: the first alone, the rest two per response, then an empty final
    response with usage. Output id i of a request is (len(prompt) + i) % VOCAB_SIZE. Reports
    cached_tokens = 8 x the whole 8-token blocks of the longest prefix shared with an earlier prompt."""

    def __init__(self):
        self.prompts: list[list[int]] = []
        self.num_preemptions = 0

    def GetModelInfo(self, request, context):
        return generation_pb2.ModelInfo(model_id="scripted", vocab_size=VOCAB_SIZE, max_model_len=4096,
                                        block_size=8, eos_token_ids=[EOS_ID])

    def GetStats(self, request, context):
        hits = 4 * len(self.prompts)
        return generation_pb2.Stats(num_preemptions=self.num_preemptions,
                                    tiers=[generation_pb2.TierStats(tier="ram", num_hits=hits, num_misses=hits)])

    def _cached(self, prompt):
        shared = 0
        for earlier in self.prompts:
            common = next((i for i, (a, b) in enumerate(zip(prompt, earlier)) if a != b), min(len(prompt), len(earlier)))
            shared = max(shared, common)
        return shared // 8 * 8

    def Generate(self, request, context):
        prompt, num_tokens = list(request.tokens.ids), request.stopping.max_tokens
        assert request.stopping.ignore_eos and request.sampling.temperature == 0.0
        cached = self._cached(prompt)
        self.prompts.append(prompt)
        self.num_preemptions += 1
        ids = [(len(prompt) + i) % VOCAB_SIZE for i in range(num_tokens)]
        chunks = [ids[:1]] + [ids[i:i + 2] for i in range(1, num_tokens, 2)]
        for chunk in chunks:
            time.sleep(0.002)
            yield generation_pb2.GenerateResponse(request_id=request.request_id, token_ids=chunk)
        yield generation_pb2.GenerateResponse(
            request_id=request.request_id, finish_reason=generation_pb2.FINISH_REASON_LENGTH,
            usage=generation_pb2.Usage(prompt_tokens=len(prompt), completion_tokens=num_tokens,
                                       cached_tokens=cached))
