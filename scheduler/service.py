"""strata.v1.Generation: each RPC validates and hands over to the engine; an ApiError it raises
becomes its status in the runtime's interceptor (Generate's stream included)."""
from __future__ import annotations

import itertools
import uuid

from tokenizers import Tokenizer

from protos.v1 import executor_pb2, generation_pb2, generation_pb2_grpc
from runtime.api_keys import ApiKeys
from scheduler.block_hash import make_namespace
from scheduler.chat_files import read_chat_files
from scheduler.engine import Engine
from scheduler.errors import Unavailable
from scheduler.request import Request
from scheduler.validation import (ModelLimits, check_sampling, check_sizes, check_token_ids,
                                  prompt_token_ids, stop_criteria)


class GenerationService(generation_pb2_grpc.GenerationServicer):
    """Serves UNAVAILABLE until `attach` gives it the engine (once the executor answered).
    `api_keys` only salts the prefix cache per key here: the interceptor already refused callers
    without one."""

    def __init__(self, api_keys: ApiKeys = ApiKeys([])):
        self.engine: Engine | None = None
        self.api_keys = api_keys
        self.arrivals = itertools.count()

    def attach(self, engine: Engine, tokenizer: Tokenizer,
               describe: executor_pb2.DescribeResponse) -> None:
        self.tokenizer = tokenizer
        self.describe = describe
        self.chat_files = read_chat_files(describe.model_path)
        self.limits = ModelLimits(describe.vocab_size, describe.max_model_len,
                                  describe.block_size, describe.num_blocks)
        self.page_shape = (describe.num_layers, 2, describe.block_size, describe.num_kv_heads,
                           describe.head_dim)
        self.engine = engine

    def check_ready(self) -> None:
        if self.engine is None:
            raise Unavailable("the server is not connected to its executor yet: retry shortly")

    def Generate(self, request, context):
        self.check_ready()
        cache_salt = self.api_keys.cache_salt(context.invocation_metadata(), request.cache_salt)
        scheduled = self.make_request(request, cache_salt)
        stream = self.engine.submit(scheduled)
        if not context.add_callback(lambda: self.engine.abort(scheduled)):
            # The client left before the callback could be registered: gRPC will never call it,
            # and the stream, with an output every step, would never notice.
            self.engine.abort(scheduled)
            return
        yield from stream.responses(context.is_active)

    def Tokenize(self, request, context):
        self.check_ready()
        is_special_added = not request.HasField("add_special_tokens") or request.add_special_tokens
        return generation_pb2.TokenizeResponse(
            ids=self.tokenizer.encode(request.text, add_special_tokens=is_special_added).ids)

    def Detokenize(self, request, context):
        self.check_ready()
        ids = list(request.ids)
        check_token_ids("ids", ids, self.limits)
        pieces = [self.tokenizer.decode([token_id], skip_special_tokens=False) for token_id in ids]
        return generation_pb2.DetokenizeResponse(
            text=self.tokenizer.decode(ids, skip_special_tokens=False), pieces=pieces)

    def GetModelInfo(self, request, context):
        self.check_ready()
        d = self.describe
        return generation_pb2.ModelInfo(
            model_id=d.model_id, architecture=d.architecture, dtype=d.dtype, device=d.device,
            vocab_size=d.vocab_size, max_model_len=d.max_model_len, block_size=d.block_size,
            eos_token_ids=d.eos_token_ids, **self.chat_files._asdict())

    def GetStats(self, request, context):
        self.check_ready()
        return self.engine.stats()

    def make_request(self, message: generation_pb2.GenerateRequest, cache_salt: str) -> Request:
        """Validate a GenerateRequest (raises InvalidArgument) into a scheduler Request whose
        block keys are bound to `cache_salt`."""
        check_sizes(message)
        prompt = prompt_token_ids(message, self.tokenizer, self.limits)
        check_sampling(message.sampling)
        stopping = stop_criteria(message, len(prompt), self.limits)
        namespace = make_namespace(self.describe.model_id, self.describe.kv_dtype, self.page_shape,
                                   cache_salt)
        return Request(message.request_id or uuid.uuid4().hex, prompt, message.sampling,
                       stopping, namespace, next(self.arrivals), message.priority)

    def GetMetrics(self, request, context):
        self.check_ready()
        return generation_pb2.GetMetricsResponse(text=self.engine.metrics_text())
