"""`strata gateway`: the OpenAI-compatible HTTP API in front of `strata.v1.Generation`.

A separate process (FastAPI on uvicorn) and a gRPC client like any other: HTTP and JSON never
enter the scheduler. Modules: `app` (routes, auth), `schemas` (request bodies), `mapping`
(OpenAI fields -> GenerateRequest), `backend` (the grpc.aio client), `completions` (responses
and streamed chunks), `sse` (framing), `chat_template` (sandboxed Jinja), `errors`, `server`
(the command).
"""
