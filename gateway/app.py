"""The OpenAI-compatible HTTP server: app factory, routes, and ``run(config)``.

Routes stay thin: validate (pydantic, in the signature), hand the body to the pipeline, format.
Errors are never caught here; ``gateway.errors`` maps them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib.metadata
import logging
import re
import time
import types
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import httpx
import uvicorn
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from bundle.layout import Bundle
from gateway.admission import InFlightLimit, cancel_on_disconnect
from gateway.auth import ApiKeys
from gateway.chat import ChatPrompter
from gateway.clients import ServiceClients
from gateway.config import GatewayConfig
from gateway.errors import ModelNotFound, install_error_handlers
from gateway.events import ChoiceEvent
from gateway.formatting import Formatter
from gateway.fusion import FusionStage
from gateway.limits import BodySizeLimit, check_input_size
from gateway.media import MediaLoader
from gateway.media_tokens import MediaTokenCounter
from gateway.metrics import ARRIVED, Metrics, ObserveRequests
from gateway.openapi import ERROR_RESPONSES, STREAM_RESPONSE, truthful_openapi
from gateway.pipeline import Job, Pipeline
from gateway.positions import image_layout
from gateway.protocol.chat_completions import ChatCompletionRequest
from gateway.protocol.completions import CompletionRequest
from gateway.responses import ChatCompletion, Completion, ModelCard, ModelList
from gateway.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeResponse,
    detokenize,
    parse_tokenize_request,
    tokenize,
)
from services.common.device import resolve_device
from services.common.grpc_server import configure_logging
from services.common.health import AUDIO_SERVICE, DECODER_SERVICE, VISION_SERVICE

log = logging.getLogger(__name__)
MODEL_INFO_TIMEOUT_S = 2.0
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SERVICE_OF_MODALITY = {"text": DECODER_SERVICE, "image": VISION_SERVICE, "audio": AUDIO_SERVICE}


class Gateway:
    """What the routes share, built once at start-up."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.bundle = Bundle.load(config.bundle)
        prompter = ChatPrompter.from_pretrained(self.bundle.decoder, self.bundle.modalities)
        fusion = FusionStage.for_bundle(
            self.bundle, resolve_device(config.device), config.fusion_dtype
        )
        self.http = httpx.AsyncClient()
        self.clients = ServiceClients(config)
        self.loop = asyncio.get_running_loop()  # built in the lifespan, on the server's loop
        layout = image_layout(self.bundle, config)
        media = MediaLoader(config, self.http, MediaTokenCounter.for_bundle(self.bundle, layout))
        self.pipeline = Pipeline(
            config, prompter, fusion, self.clients, media, self.bundle.modalities, layout
        )
        self.formatter = Formatter(
            model=self.bundle.served_model_name,
            system_fingerprint=f"autoglm-serve-{importlib.metadata.version('autoglm-serve')}",
            tokenizer=prompter.tokenizer.backend_tokenizer,
        )
        self.started = int(time.time())
        # the services this bundle needs: no audio encoder for a model that takes no audio
        self.backends = [SERVICE_OF_MODALITY[m] for m in self.bundle.modalities]

    async def close(self) -> None:
        await self.clients.close()
        await self.http.aclose()

    def check_model(self, name: str) -> None:
        if name != self.bundle.served_model_name:
            raise ModelNotFound(f"The model `{name}` does not exist.", param="model")

    async def model_card(self) -> ModelCard:
        """The served model; its context length comes from the decoder when it answers."""
        try:
            info = await self.clients.decoder_info(uuid.uuid4().hex, timeout=MODEL_INFO_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            max_model_len = None
        else:
            max_model_len = info.max_model_len
        return ModelCard(
            id=self.bundle.served_model_name,
            created=self.started,
            max_model_len=max_model_len,
            modalities=list(self.bundle.modalities),
        )


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _request_id(request: Request) -> str:
    """The caller's X-Request-Id when it is a plain token (it travels as gRPC metadata); kept
    on the request so the error handler logs what it hides from the client under it."""
    given = request.headers.get("x-request-id", "")
    request.state.request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    return str(request.state.request_id)


async def _respond(
    request: Request,
    job: Job,
    collect: Callable[[Job, AsyncIterator[ChoiceEvent]], Awaitable[Any]],
    stream: Callable[[Job, AsyncIterator[ChoiceEvent]], AsyncIterator[str]],
) -> Response:
    metrics: Metrics = request.app.state.metrics
    events = metrics.track(job.events(), job.counts, request.scope[ARRIVED])
    if not job.params.stream:
        async with contextlib.aclosing(events):
            return JSONResponse((await collect(job, events)).model_dump())
    # The first event is awaited before the status line goes out, so an error the decoder
    # reports at once (prompt too long, overloaded) still gets its proper HTTP status.
    first = await anext(events)

    async def replay() -> AsyncGenerator[ChoiceEvent]:
        async with contextlib.aclosing(events):
            yield first
            async for event in events:
                yield event

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(job, replay()), media_type="text/event-stream", headers=headers)


router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


@dataclasses.dataclass(frozen=True)
class _Completions:
    """What differs between /v1/chat/completions and /v1/completions; the rest is shared."""

    prepare: Callable[[Pipeline, Any, str], Awaitable[Job]]
    collect: Callable[[Formatter, Job, AsyncIterator[ChoiceEvent]], Awaitable[Any]]
    stream: Callable[[Formatter, Job, AsyncIterator[ChoiceEvent]], AsyncIterator[str]]


CHAT = _Completions(Pipeline.prepare_chat, Formatter.chat_completion, Formatter.chat_stream)
TEXT = _Completions(Pipeline.prepare_completion, Formatter.completion, Formatter.completion_stream)


async def _complete(
    request: Request, body: ChatCompletionRequest | CompletionRequest, kind: _Completions
) -> Response:
    gateway = _gateway(request)
    request_id = _request_id(request)
    gateway.check_model(body.model)
    check_input_size(body, gateway.config)
    formatter = gateway.formatter

    async def answer() -> Response:
        job = await kind.prepare(gateway.pipeline, body, request_id)
        return await _respond(
            request,
            job,
            functools.partial(kind.collect, formatter),
            functools.partial(kind.stream, formatter),
        )

    # From here until the first token (or the whole answer) a client that leaves cancels the
    # work; once streaming, Starlette's StreamingResponse watches for the disconnect itself.
    response = await cancel_on_disconnect(request, answer)
    return response or Response(status_code=499)  # the client left; nobody reads this


async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await _complete(request, body, CHAT)


async def completions(body: CompletionRequest, request: Request) -> Response:
    return await _complete(request, body, TEXT)


for _path, _endpoint, _model, _summary in (
    (
        "/chat/completions",
        chat_completions,
        ChatCompletion,
        "Create a chat completion (streamed as server-sent events when stream is true)",
    ),
    (
        "/completions",
        completions,
        Completion,
        "Create a text completion from a raw prompt (streamed when stream is true)",
    ),
):
    router.add_api_route(
        _path,
        _endpoint,
        methods=["POST"],
        response_model=_model,
        responses=STREAM_RESPONSE,
        summary=_summary,
    )


@router.get("/models", response_model=ModelList, summary="List the served model")
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[await _gateway(request).model_card()])


@router.get("/models/{model_id}", response_model=ModelCard, summary="Describe one model")
async def get_model(model_id: str, request: Request) -> ModelCard:
    gateway = _gateway(request)
    gateway.check_model(model_id)
    return await gateway.model_card()


tokenizer_router = APIRouter(responses=ERROR_RESPONSES)


@tokenizer_router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    summary="Token ids of chat messages (as a chat completion's prompt) or of a raw prompt",
)
async def tokenize_route(raw: dict[str, Any], request: Request) -> TokenizeResponse:
    """The body is {"prompt": ...} or {"messages": [...]} (chat completions' prompt fields)."""
    gateway = _gateway(request)
    body = parse_tokenize_request(raw)
    if body.model is not None:
        gateway.check_model(body.model)
    check_input_size(body, gateway.config)
    return await tokenize(gateway.pipeline, body, _request_id(request))


@tokenizer_router.post("/detokenize", response_model=DetokenizeResponse, summary="Ids to text")
async def detokenize_route(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    gateway = _gateway(request)
    if body.model is not None:
        gateway.check_model(body.model)
    return detokenize(gateway.pipeline.tokenizer, body)


async def health(request: Request) -> JSONResponse:
    """200 when every service the bundle needs reports SERVING under its name, else 503."""
    gateway = _gateway(request)
    services = await gateway.clients.health(gateway.backends)
    ok = all(services.values())
    payload = {"status": "ok" if ok else "unavailable", "services": services}
    return JSONResponse(payload, status_code=200 if ok else 503)


async def metrics(request: Request) -> Response:
    exported: Metrics = request.app.state.metrics
    exported.observe_decoder(await _gateway(request).clients.decoder_state())
    return Response(exported.exposition(), media_type=exported.content_type)


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
    server_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=10,
    )
    _Server(server_config, app).run()
    return 0
