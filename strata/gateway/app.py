"""The FastAPI app: routes, the API key, and every error in OpenAI's shape.

    create_app(GatewayConfig("127.0.0.1:50051", api_key="k"))   # served by uvicorn (server.py)
"""
from __future__ import annotations

import contextlib
import hmac
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from strata.gateway.backend import Backend
from strata.gateway.errors import ApiError, from_validation_errors
from strata.gateway.routes import api_routes, open_routes, strata_version


@dataclass(slots=True)
class GatewayConfig:
    scheduler: str
    api_key: str | None = None
    model_name: str | None = None   # the name clients send as `model`; default: the model id
    scheduler_api_key: str | None = None   # presented to the scheduler (its keys, not api_key's)
    scheduler_ca_pem: bytes | None = None  # TLS to the scheduler, trusting this root


def create_app(config: GatewayConfig) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # On uvicorn's loop: grpc.aio needs that.
        app.state.backend = Backend(config.scheduler, config.scheduler_api_key, config.scheduler_ca_pem)
        yield
        await app.state.backend.close()

    app = FastAPI(title="Strata", version=strata_version(), lifespan=lifespan)
    app.state.config = config
    add_error_handlers(app)
    app.include_router(open_routes())
    app.include_router(api_routes(), dependencies=[Depends(check_api_key)])
    return app


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        refused = from_validation_errors(list(error.errors()))   # 400, not FastAPI's 422
        return JSONResponse(refused.body(), status_code=refused.status)


def check_api_key(request: Request) -> None:
    expected = request.app.state.config.api_key
    if expected is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                       "authentication_error", code="invalid_api_key")
