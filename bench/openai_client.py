"""`strata bench --backend openai`: the same workloads as streaming POST /v1/completions with
token-id prompts to any OpenAI-compatible server (Strata's gateway, vLLM's own server), through
the driver's LoadGenerator (same sessions, same --max-concurrency cap), read by bench.sse.

Each request is `prompt: [ids]`, greedy, `ignore_eos` with exact `max_tokens`, streamed with
`stream_options.include_usage`. A multi-turn history needs the ids a turn returned: they come in
the chunks where the server sends them (`--return-token-ids`: vLLM's `return_token_ids`),
otherwise the turn's text goes through the server's /tokenize (vLLM's and Strata's), after the
request and outside the concurrency cap. The vocabulary the prompts are drawn from is the
checkpoint's (--model-dir DIR/config.json): the HTTP API does not say it.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Awaitable, Callable, NamedTuple

import httpx2

from bench.driver import LoadGenerator, RunResult, SentRequest
from bench.sse import CompletionStream, SseParser, StreamError, error_message


class Endpoint(NamedTuple):
    base_url: str            # scheme://host:port, without /v1
    api_key: str | None
    model: str | None        # the request's "model"; None: the first GET /v1/models lists
    is_token_ids_requested: bool = False

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def endpoint_of(base_url: str, api_key: str | None, model: str | None,
                is_token_ids_requested: bool = False) -> Endpoint:
    """Accepts the URL with or without the /v1 the openai client appends."""
    base = base_url.rstrip("/")
    base = base[:-len("/v1")] if base.endswith("/v1") else base
    return Endpoint(base, api_key, model, is_token_ids_requested)


class ServedModel(NamedTuple):
    """What the workloads and the report need (the fields of the gRPC ModelInfo they read)."""
    model_id: str
    vocab_size: int
    eos_token_ids: list[int]
    max_model_len: int | None
    architecture: str | None = None
    dtype: str | None = None
    device: str | None = None
    block_size: int | None = None


def checkpoint_vocabulary(model_dir: str) -> tuple[int, list[int], str | None]:
    """(vocab_size, EOS ids, architecture) from DIR/config.json."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    eos = config.get("eos_token_id")
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return int(config["vocab_size"]), eos_ids, (config.get("architectures") or [None])[0]


async def get_served_model(endpoint: Endpoint, model_dir: str) -> ServedModel:
    """GET /v1/models (the served name and max_model_len) plus the checkpoint's vocabulary;
    ValueError when either cannot be read."""
    try:
        vocab_size, eos_ids, architecture = checkpoint_vocabulary(model_dir)
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"--model-dir {model_dir}: no readable config.json with vocab_size ({error})") from None
    try:
        async with httpx2.AsyncClient(headers=endpoint.headers, timeout=30) as client:
            response = await client.get(f"{endpoint.base_url}/v1/models")
    except httpx2.HTTPError as error:
        raise ValueError(f"GET {endpoint.base_url}/v1/models: {type(error).__name__}: {error}") from None
    if response.status_code != 200:
        raise ValueError(f"GET {endpoint.base_url}/v1/models: HTTP {response.status_code}: "
                         f"{error_message(_json_or_text(response.content))}")
    models = response.json()["data"]
    served = next((m for m in models if m["id"] == endpoint.model), models[0]) if models else {}
    return ServedModel(endpoint.model or served.get("id", ""), vocab_size, eos_ids,
                       served.get("max_model_len"), architecture)


def completion_body(endpoint: Endpoint, model: str, request: SentRequest) -> dict:
    body = {"model": model, "prompt": request.prompt_ids, "max_tokens": request.max_tokens,
            "temperature": 0.0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    if endpoint.is_token_ids_requested:
        body["return_token_ids"] = True
    return body


def _json_or_text(content: bytes):
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", errors="replace")


class OpenAISender:
    """The driver's Sender over one HTTP client (no connection limit: the driver's cap is the
    only one, as with gRPC)."""

    def __init__(self, client: httpx2.AsyncClient, endpoint: Endpoint, model: str):
        self.client = client
        self.endpoint = endpoint
        self.model = model

    async def send(self, request_id: str, request: SentRequest, timeout_s: float) -> None:
        stream = CompletionStream(request)
        request.trace.send_time = time.perf_counter()
        try:
            await asyncio.wait_for(self._stream(stream), timeout_s)
            stream.finish()
        except StreamError as error:
            request.trace.error = str(error)
        except (httpx2.HTTPError, OSError) as error:
            request.trace.error = f"{type(error).__name__}: {error}"
        except asyncio.TimeoutError:
            request.trace.error = f"no complete response within {timeout_s:g} s"
        request.output_text = stream.text

    async def _stream(self, stream: CompletionStream) -> None:
        body = completion_body(self.endpoint, self.model, stream.request)
        url = f"{self.endpoint.base_url}/v1/completions"
        async with self.client.stream("POST", url, json=body, headers=self.endpoint.headers) as response:
            if response.status_code != 200:
                content = await response.aread()
                raise StreamError(f"HTTP {response.status_code}: {error_message(_json_or_text(content))}")
            parser = SseParser()
            async for chunk in response.aiter_bytes():
                now = time.perf_counter()
                for payload in parser.feed(chunk):
                    stream.apply(payload, now)

    async def fill_output_ids(self, request: SentRequest) -> None:
        if request.output_ids:   # the server sent them
            return
        try:
            response = await self.client.post(f"{self.endpoint.base_url}/tokenize", json={
                "model": self.model, "prompt": request.output_text, "add_special_tokens": False},
                headers=self.endpoint.headers)
        except httpx2.HTTPError as error:
            request.trace.error = f"/tokenize: {type(error).__name__}: {error}"
            return
        if response.status_code != 200:
            request.trace.error = f"/tokenize: HTTP {response.status_code}: " \
                                  f"{error_message(_json_or_text(response.content))}"
            return
        request.output_ids.extend(response.json()["tokens"])


async def run_workload(endpoint: Endpoint, model: str, drive: Callable[[LoadGenerator], Awaitable[float]],
                       max_concurrency: int | None, on_request_done: Callable[[], None],
                       tag: str = "run", request_timeout_s: float = 3600.0) -> RunResult:
    """bench.driver.run_workload over HTTP; no server counters (GetStats is gRPC's)."""
    limits = httpx2.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx2.Timeout(request_timeout_s, connect=30)
    async with httpx2.AsyncClient(limits=limits, timeout=timeout) as client:
        sender = OpenAISender(client, endpoint, model)
        generator = LoadGenerator(sender, max_concurrency, request_timeout_s, on_request_done, tag)
        duration_s = await drive(generator)
    return RunResult(generator.sent, duration_s, None, None, generator.turn_wall_s)
