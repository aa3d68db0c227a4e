"""bench.openai_client's sender on a mock transport: the body it posts, and every way a request
fails (status, error event, cut stream) recorded as a failure, never a success."""
import asyncio
import json

import httpx2

from bench.driver import SentRequest
from bench.metrics import RequestTrace
from bench.openai_client import OpenAISender, endpoint_of

OK_BODY = (b'data: {"choices":[{"index":0,"text":"hi","finish_reason":"length"}]}\n\n'
           b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\ndata: [DONE]\n\n')


def send_with(handler, endpoint=endpoint_of("http://server:8000/v1/", "k", "m")) -> tuple[SentRequest, list]:
    seen = []

    def record(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return handler(request)

    async def main():
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(record)) as client:
            request = SentRequest([5, 6, 7], 2, RequestTrace(0.0))
            await OpenAISender(client, endpoint, "m").send("r0", request, 10.0)
            return request
    return asyncio.run(main()), seen


def test_posts_token_ids_greedy_ignore_eos_streamed_with_usage():
    request, seen = send_with(lambda r: httpx2.Response(200, content=OK_BODY))
    assert str(seen[0].url) == "http://server:8000/v1/completions"
    assert seen[0].headers["authorization"] == "Bearer k"
    assert json.loads(seen[0].content) == {
        "model": "m", "prompt": [5, 6, 7], "max_tokens": 2, "temperature": 0.0, "ignore_eos": True,
        "stream": True, "stream_options": {"include_usage": True}}
    assert request.trace.is_ok and request.trace.num_output_tokens == 2 and request.output_text == "hi"


def test_http_status_is_a_failure_with_the_message():
    body = {"error": {"message": "prompt too long", "type": "invalid_request_error"}}
    request, _ = send_with(lambda r: httpx2.Response(400, json=body))
    assert request.trace.error == "HTTP 400: prompt too long" and not request.trace.is_ok


def test_error_event_and_cut_stream_are_failures():
    event = b'data: {"choices":[{"text":"a"}]}\n\ndata: {"error":{"message":"aborted"}}\n\ndata: [DONE]\n\n'
    request, _ = send_with(lambda r: httpx2.Response(200, content=event))
    assert request.trace.error == "aborted" and not request.trace.is_ok
    request, _ = send_with(lambda r: httpx2.Response(200, content=OK_BODY[:-len(b"data: [DONE]\n\n")]))
    assert "before data: [DONE]" in request.trace.error and not request.trace.is_ok


def test_connection_error_is_a_failure():
    def refuse(request):
        raise httpx2.ConnectError("connection refused", request=request)
    request, _ = send_with(refuse)
    assert request.trace.error.startswith("ConnectError") and not request.trace.is_ok
