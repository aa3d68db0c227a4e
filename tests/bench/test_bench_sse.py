"""bench.sse on exact bytes: events split anywhere, [DONE], error events, the token count."""
import pytest

from bench.driver import SentRequest
from bench.metrics import RequestTrace, itls_s, ttft_s
from bench.sse import CompletionStream, SseParser, StreamError

CHUNK_A = b'data: {"choices":[{"index":0,"text":"a","finish_reason":null}]}\n\n'
CHUNK_BC = b'data: {"choices":[{"index":0,"text":"bc","finish_reason":"length"}]}\n\n'
USAGE = (b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,'
         b'"prompt_tokens_details":{"cached_tokens":4}}}\n\n')
DONE = b"data: [DONE]\n\n"
BODY = CHUNK_A + CHUNK_BC + USAGE + DONE


def feed_all(parser: SseParser, pieces: list[bytes]) -> list[str]:
    return [payload for piece in pieces for payload in parser.feed(piece)]


def test_whole_body_gives_one_payload_per_event():
    payloads = SseParser().feed(BODY)
    assert payloads == [CHUNK_A[6:-2].decode(), CHUNK_BC[6:-2].decode(), USAGE[6:-2].decode(), "[DONE]"]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 50])
def test_split_anywhere_gives_the_same_payloads(size):
    pieces = [BODY[i:i + size] for i in range(0, len(BODY), size)]
    assert feed_all(SseParser(), pieces) == SseParser().feed(BODY)


def test_split_inside_a_utf8_character_and_crlf_lines():
    body = 'data: {"choices":[{"text":"é"}]}\r\n\r\ndata: [DONE]\r\n\r\n'.encode()
    cut = body.index("é".encode()) + 1
    assert feed_all(SseParser(), [body[:cut], body[cut:]]) == ['{"choices":[{"text":"é"}]}', "[DONE]"]


def test_incomplete_event_waits_comments_and_other_fields_are_ignored():
    parser = SseParser()
    assert parser.feed(b": keep-alive\n\nevent: x\nid: 3\ndata:[DO") == []
    assert parser.feed(b"NE]\n") == []
    assert parser.feed(b"\n") == ["[DONE]"]
    assert parser.feed(b"data: a\ndata: b\n\n") == ["a\nb"]


def stream_of(body: bytes, times=None) -> CompletionStream:
    stream = CompletionStream(SentRequest([1, 2, 3, 4, 5], 3, RequestTrace(0.0)))
    for i, payload in enumerate(SseParser().feed(body)):
        stream.apply(payload, times[i] if times else float(i + 1))
    return stream


def test_trace_counts_text_chunks_and_settles_on_usage():
    stream = stream_of(BODY, [0.1, 0.3, 0.31, 0.32])
    stream.finish()
    trace = stream.request.trace
    # "bc" is one chunk: usage says 3 tokens, the extra one goes to the first chunk (no ITL)
    assert trace.tokens_per_response == [2, 1, 0]
    assert trace.response_times == [0.1, 0.3, 0.31]
    assert trace.num_output_tokens == 3 and trace.num_cached_tokens == 4 and trace.is_ok
    assert ttft_s(trace) == 0.1 and itls_s(trace) == [pytest.approx(0.2)]
    assert stream.text == "abc" and stream.request.output_ids == []


def test_token_ids_in_chunks_are_the_output():
    body = (b'data: {"choices":[{"text":"ab","token_ids":[7,8]}]}\n\n'
            b'data: {"choices":[{"text":"","token_ids":[9],"finish_reason":"length"}]}\n\n' + DONE)
    stream = stream_of(body)
    stream.finish()
    assert stream.request.output_ids == [7, 8, 9]
    assert stream.request.trace.tokens_per_response == [2, 1]


def test_error_event_raises_with_its_message():
    body = CHUNK_A + b'data: {"error":{"message":"the server aborted","type":"server_error"}}\n\n' + DONE
    with pytest.raises(StreamError, match="the server aborted"):
        stream_of(body)


def test_vllm_error_object_raises_with_its_message():
    with pytest.raises(StreamError, match="out of KV"):
        stream_of(b'data: {"object":"error","message":"out of KV","type":"InternalServerError"}\n\n')


def test_missing_done_and_abort_finish_are_errors():
    with pytest.raises(StreamError, match=r"before data: \[DONE\]"):
        stream_of(CHUNK_A + CHUNK_BC).finish()
    with pytest.raises(StreamError, match="'abort'"):
        stream_of(b'data: {"choices":[{"text":"","finish_reason":"abort"}]}\n\n')
    with pytest.raises(StreamError, match="not JSON"):
        stream_of(b"data: {oops\n\n")
