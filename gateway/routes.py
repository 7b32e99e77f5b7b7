"""The HTTP routes: /v1 completions and models, /tokenize and /detokenize, /health, /metrics.

Routes stay thin: validate (pydantic, in the signature), hand the body to the pipeline, format.
Errors are never caught here; ``gateway.errors`` maps them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.admission import cancel_on_disconnect
from gateway.app_state import Gateway
from gateway.events import ChoiceEvent
from gateway.formatting import Formatter
from gateway.job import Job
from gateway.limits import check_input_size
from gateway.metrics import ARRIVED, Metrics
from gateway.openapi import ERROR_RESPONSES, STREAM_RESPONSE
from gateway.pipeline import Pipeline
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

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


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
