"""A scripted stand-in for the gateway's Backend: the app runs in-process (httpx2's ASGI
transport), each Generate call replays a script of responses or ends with a gRPC status."""
from __future__ import annotations

import asyncio

import grpc
import httpx2

from executor.default_model import CHAT_TEMPLATE
from protos.v1 import common_pb2, generation_pb2
from strata.gateway.app import GatewayConfig, create_app
from strata.gateway.backend import FanOut
from strata.gateway.chat_template import ChatTemplate

MODEL_ID = "tiny"
STOP, LENGTH, ABORT = (generation_pb2.FINISH_REASON_STOP, generation_pb2.FINISH_REASON_LENGTH,
                       generation_pb2.FINISH_REASON_ABORT)


def response(text, token_ids, finish_reason=0, prompt_tokens=3, cached_tokens=0, logprobs=(),
             completion_tokens=None):
    message = generation_pb2.GenerateResponse(text=text, token_ids=token_ids, finish_reason=finish_reason,
                                              logprobs=list(logprobs))
    if finish_reason:
        message.usage.CopyFrom(generation_pb2.Usage(prompt_tokens=prompt_tokens, cached_tokens=cached_tokens,
                                                    completion_tokens=completion_tokens or len(token_ids)))
    return message


def rpc_error(code, details):
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class ScriptedCall:
    """Replays responses (an exception in the script is raised there); records its cancel."""

    def __init__(self, script, delay_s=0.0):
        self.script = script
        self.delay_s = delay_s
        self.is_cancelled = False

    def __aiter__(self):
        return self._replay()

    async def _replay(self):
        for item in self.script:
            await asyncio.sleep(self.delay_s)
            if isinstance(item, Exception):
                raise item
            yield item

    def cancel(self):
        self.is_cancelled = True


class FakeBackend:
    def __init__(self, scripts, chat_template=CHAT_TEMPLATE):
        self.scripts = list(scripts)   # one per Generate call, in call order
        self.requests: list[generation_pb2.GenerateRequest] = []
        self.calls: list[ScriptedCall] = []
        self.template = ChatTemplate(chat_template, "", "<|endoftext|>")

    async def model_info(self):
        return generation_pb2.ModelInfo(model_id=MODEL_ID, max_model_len=64, vocab_size=100)

    async def chat_template(self):
        return self.template

    async def tokenize(self, text, is_special_added):
        return [ord(c) % 100 for c in text]

    async def detokenize(self, ids):
        return generation_pb2.DetokenizeResponse(text="".join(f"<{i}>" for i in ids),
                                                 pieces=[f"<{i}>" for i in ids])

    async def stats(self):
        return generation_pb2.Stats()

    def fan_out(self, requests):
        self.requests.extend(requests)
        calls = [ScriptedCall(self.scripts.pop(0)) for _ in requests]
        self.calls.extend(calls)
        return FanOut(calls)


def client_of(backend, api_key=None, model_name=None) -> httpx2.AsyncClient:
    app = create_app(GatewayConfig("unused:0", api_key, model_name))
    app.state.backend = backend   # the ASGI transport runs no lifespan: no real channel is made
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gateway")


def logprobs(logprob, top_ids, top_values):
    return common_pb2.TokenLogprobs(logprob=logprob, top_token_ids=top_ids, top_logprobs=top_values)
