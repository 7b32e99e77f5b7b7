"""The OpenAI-compatible HTTP server: the app factory (routes from ``gateway.routes``, the
middleware) and ``run(config)``."""

from __future__ import annotations

import contextlib
import importlib.metadata
import types
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI

from gateway.admission import InFlightLimit
from gateway.app_state import Gateway
from gateway.auth import ApiKeys
from gateway.config import GatewayConfig
from gateway.errors import install_error_handlers
from gateway.limits import BodySizeLimit
from gateway.metrics import Metrics, ObserveRequests
from gateway.openapi import truthful_openapi
from gateway.routes import health, metrics, router, tokenizer_router
from services.common.grpc_server import configure_logging


def create_app(config: GatewayConfig) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.gateway = Gateway(config)
        try:
            yield
        finally:
            await app.state.gateway.close()

    app = FastAPI(
        title="autoglm-serve",
        summary="OpenAI-compatible API of the AutoGLM multimodal server",
        version=importlib.metadata.version("autoglm-serve"),
        lifespan=lifespan,
    )
    app.include_router(router)
    app.include_router(tokenizer_router)
    app.add_api_route(
        "/health",
        health,
        methods=["GET"],
        summary="Readiness: 200 once vision, audio and decoder all report SERVING, else 503",
    )
    app.add_api_route(
        "/metrics", metrics, methods=["GET"], summary="Prometheus metrics", include_in_schema=False
    )
    install_error_handlers(app)
    app.state.metrics = Metrics()
    app.add_middleware(ObserveRequests, metrics=app.state.metrics)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(InFlightLimit, max_in_flight=config.max_in_flight_requests)
    # added last, so outermost: the key is checked before the body is read or limited
    app.add_middleware(ApiKeys, api_key=config.api_key, metrics_api_key=config.metrics_api_key)
    app.openapi = lambda: truthful_openapi(app)  # type: ignore[method-assign]
    return app


class _Server(uvicorn.Server):
    """uvicorn, and on SIGTERM/SIGINT every open stream ends with an error event and [DONE]
    (instead of being cut when the grace period runs out)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
        super().handle_exit(sig, frame)
        gateway: Gateway | None = getattr(self.app.state, "gateway", None)
        if gateway is not None:  # a signal handler may only schedule work on the loop
            gateway.loop.call_soon_threadsafe(gateway.clients.end_streams)


def run(config: GatewayConfig) -> int:
    configure_logging(config.log_level)
    app = create_app(config)
    # uvloop and httptools (uvicorn's fast paths, both required dependencies): per streamed
    # token the gateway wakes for a gRPC message and writes an SSE chunk, and on a 2-core host
    # every cycle it spends there is taken from the decoder's step
    server_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=10,
        loop="uvloop",
        http="httptools",
    )
    _Server(server_config, app).run()
    return 0
