"""The endpoints: OpenAI's /v1/completions, /v1/chat/completions, /v1/models; vLLM's /tokenize,
/detokenize; /health, /version and /metrics (Prometheus). Each maps its body to GenerateRequests (mapping.py) and
hands the calls to completions.py."""
from __future__ import annotations

import asyncio
import importlib.metadata
import time

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from strata.gateway import completions, mapping
from strata.gateway.backend import Backend, FanOut
from strata.gateway.chat_template import RenderedChat, template_messages
from strata.gateway.completions import Completion
from strata.gateway.errors import ApiError, bad_request
from strata.gateway.schemas import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                                    SamplingFields, TokenizeChat, TokenizeCompletion)
from strata.gateway.shapes import ChatShape, CompletionShape

STARTED = int(time.time())
DISCONNECT_POLL_S = 0.25   # how soon a collected (not streamed) request notices its client left


def strata_version() -> str:
    try:
        return importlib.metadata.version("strata-serve")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def backend_of(request: Request) -> Backend:
    return request.app.state.backend


async def checked_model_name(request: Request, model: str | None) -> str:
    """The served name (--model-name, else the model id); a request naming another gets 400."""
    name = request.app.state.config.model_name or (await backend_of(request).model_info()).model_id
    if model is not None and model != name:
        raise bad_request(f"model {model!r} is not served here: this server serves {name!r}",
                          "model", "model_not_found")
    return name


def open_routes() -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health(request: Request):
        await backend_of(request).stats()   # 503 in the error shape while the scheduler is down
        return {"status": "ok"}

    @router.get("/version")
    async def version():
        return {"version": strata_version()}

    @router.get("/metrics")
    async def metrics(request: Request):
        """One scrape for the whole server: the scheduler's metrics and its kvstore's. Open, as
        vLLM's /metrics and /health (a scraper holds no API key)."""
        text = await backend_of(request).metrics_text()
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return router


def api_routes() -> APIRouter:
    router = APIRouter()
    router.add_api_route("/v1/models", list_models, methods=["GET"])
    router.add_api_route("/v1/completions", create_completion, methods=["POST"])
    router.add_api_route("/v1/chat/completions", create_chat_completion, methods=["POST"])
    router.add_api_route("/tokenize", tokenize, methods=["POST"])
    router.add_api_route("/detokenize", detokenize, methods=["POST"])
    return router


async def list_models(request: Request):
    name = await checked_model_name(request, None)
    info = await backend_of(request).model_info()
    return {"object": "list", "data": [{"id": name, "object": "model", "created": STARTED,
                                        "owned_by": "strata", "root": info.model_id,
                                        "max_model_len": info.max_model_len}]}


async def create_completion(body: CompletionRequest, request: Request):
    name = await checked_model_name(request, body.model)
    prompts = mapping.completion_prompts(body)
    max_tokens = mapping.completion_max_tokens(body)
    generate = [r for prompt in prompts
                for r in mapping.generate_requests(body, prompt, max_tokens, body.logprobs)]
    completion = Completion(CompletionShape, name, len(prompts), body.n, body.logprobs)
    return await respond(request, body, completion, generate)


async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    name = await checked_model_name(request, body.model)
    num_logprobs = mapping.chat_logprobs(body)
    backend = backend_of(request)
    rendered = await render_chat(backend, body.messages, body.add_generation_prompt)
    # Tokenized here (not by Generate) to know how many tokens the model's length leaves.
    token_ids = await backend.tokenize(rendered.text, rendered.is_special_added)
    max_tokens = mapping.chat_max_tokens(body, len(token_ids), (await backend.model_info()).max_model_len)
    generate = mapping.generate_requests(body, mapping.Prompt(token_ids=token_ids), max_tokens, num_logprobs)
    completion = Completion(ChatShape, name, 1, body.n, num_logprobs)
    return await respond(request, body, completion, generate)


async def render_chat(backend: Backend, messages, add_generation_prompt: bool) -> RenderedChat:
    template = await backend.chat_template()
    plain = [message.model_dump(exclude_none=False) for message in messages]
    return template.render(template_messages(plain), add_generation_prompt)


async def respond(request: Request, body: SamplingFields, completion: Completion, generate: list):
    for index, message in enumerate(generate):   # the scheduler's logs name the HTTP request
        message.request_id = f"{completion.shape.id_prefix}{completion.request_id}-{index}"
    fan_out = backend_of(request).fan_out(generate)
    if not body.stream:
        collecting = completions.collect(backend_of(request), completion, fan_out.responses(), fan_out.cancel)
        return await unless_disconnected(request, collecting, fan_out)
    is_usage_included = body.stream_options is not None and body.stream_options.include_usage
    responses = await primed(fan_out)
    events = completions.stream(backend_of(request), completion, responses, fan_out.cancel, is_usage_included)
    return StreamingResponse(events, media_type="text/event-stream")


async def unless_disconnected(request: Request, collecting, fan_out: FanOut):
    """The collected response, or, once the client has gone away, every call cancelled (the
    scheduler frees their blocks) instead of generating for nobody."""
    collector = asyncio.ensure_future(collecting)
    watcher = asyncio.ensure_future(wait_disconnected(request))
    await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    watcher.cancel()
    if collector.done():
        return collector.result()
    collector.cancel()
    fan_out.cancel()
    raise ApiError(499, "the client closed the connection", "cancelled", code="cancelled")


async def wait_disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)


async def primed(fan_out: FanOut):
    """The merged responses, once the first has come: a request the scheduler refuses (it does so
    before any token) gets its HTTP status instead of a 200 stream holding an error event."""
    responses = fan_out.responses()
    try:
        first = await anext(responses, None)
    except ApiError:
        fan_out.cancel()
        raise

    async def chained():
        if first is not None:
            yield first
        async for item in responses:
            yield item
    return chained()


async def tokenize(body: TokenizeCompletion | TokenizeChat, request: Request):
    """vLLM's shape: {"count", "max_model_len", "tokens", "token_strs"}; a chat is rendered first."""
    await checked_model_name(request, body.model)
    backend = backend_of(request)
    if isinstance(body, TokenizeChat):
        rendered = await render_chat(backend, body.messages, body.add_generation_prompt)
        ids = await backend.tokenize(rendered.text, rendered.is_special_added)
    else:
        ids = await backend.tokenize(body.prompt, body.add_special_tokens)
    info = await backend.model_info()
    return {"count": len(ids), "max_model_len": info.max_model_len, "tokens": ids, "token_strs": None}


async def detokenize(body: DetokenizeRequest, request: Request):
    await checked_model_name(request, body.model)
    return {"prompt": (await backend_of(request).detokenize(body.tokens)).text}
