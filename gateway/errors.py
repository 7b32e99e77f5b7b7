"""The one error mapper: any exception -> an OpenAI error body and an HTTP status.

Used twice: as the FastAPI exception handlers (before a response started) and for the error
chunk of a stream that already began. Only messages known to be safe reach a client: domain
errors (``services.common.errors``), the gateway's own ``ApiError``s, validation messages and the
details of the gRPC statuses marked ``details_safe`` (written by the services' domain code).
Everything else gets a fixed message; its text is only logged. Domain errors map through their
gRPC status (``status_of``), so one table, ``OPENAI_ERROR_OF_STATUS``, serves both.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import grpc
import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from gateway.responses import ErrorBody, ErrorResponse
from services.common.errors import ServiceError, status_of

log = logging.getLogger(__name__)
RETRY_AFTER_S = "1"


class ApiError(Exception):
    """An error the gateway raises itself, with the status and OpenAI type it maps to."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class AuthenticationFailed(ApiError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class ModelNotFound(ApiError):
    status, code = 404, "model_not_found"


class ContextLengthExceeded(ApiError):
    code = "context_length_exceeded"


class BodyTooLarge(ApiError):
    status, code = 413, "request_too_large"


class UnsupportedEncoding(ApiError):
    status, code = 415, "unsupported_content_encoding"


@dataclasses.dataclass(frozen=True)
class MappedError:
    status: int
    body: ErrorResponse
    headers: dict[str, str]

    def response(self) -> JSONResponse:
        return JSONResponse(self.body.model_dump(), status_code=self.status, headers=self.headers)


def _mapped(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None
) -> MappedError:
    headers = {"Retry-After": RETRY_AFTER_S} if status in (429, 503) else {}
    body = ErrorResponse(error=ErrorBody(message=message, type=kind, param=param, code=code))
    return MappedError(status, body, headers)


@dataclasses.dataclass(frozen=True)
class OpenAIError:
    """What a gRPC status becomes for an OpenAI client."""

    status: int
    type: str
    message: str  # shown when the details are empty or not safe to show
    code: str | None = None
    # written by the services' domain code, never a connection's addresses
    details_safe: bool = False


_INVALID = OpenAIError(400, "invalid_request_error", "invalid request", details_safe=True)
# A service's unexpected failure: its details may hold exception text or addresses, never shown.
INTERNAL = OpenAIError(500, "server_error", "internal error")
# Rows by status code, or by (code, text that gRPC's own details contain) where one code means
# two things.
MESSAGE_TOO_LARGE = "message larger than max"
OPENAI_ERROR_OF_STATUS: dict[grpc.StatusCode | tuple[grpc.StatusCode, str], OpenAIError] = {
    grpc.StatusCode.INVALID_ARGUMENT: _INVALID,
    grpc.StatusCode.OUT_OF_RANGE: _INVALID,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OpenAIError(
        429, "rate_limit_error", "server overloaded", "overloaded", details_safe=True
    ),
    grpc.StatusCode.UNAVAILABLE: OpenAIError(
        503, "service_unavailable_error", "a model service is unavailable; retry later"
    ),
    grpc.StatusCode.DEADLINE_EXCEEDED: OpenAIError(
        504, "timeout_error", "the request did not finish within its deadline"
    ),
    grpc.StatusCode.INTERNAL: INTERNAL,
    grpc.StatusCode.UNKNOWN: INTERNAL,
    # a service that is shutting down cancels the calls it still has: retrying elsewhere works
    grpc.StatusCode.CANCELLED: OpenAIError(
        503, "service_unavailable_error", "a model service is shutting down; retry later"
    ),
    # gRPC's own message-size check (RESOURCE_EXHAUSTED, "... message larger than max ..."):
    # the request is too large, and retrying it (as a 429 invites) can never work
    (grpc.StatusCode.RESOURCE_EXHAUSTED, MESSAGE_TOO_LARGE): OpenAIError(
        413,
        "invalid_request_error",
        "the request is too large to pass between the model services",
        "request_too_large",
    ),
}


def _from_status(kind: OpenAIError, details: str | None, *, trusted: bool = False) -> MappedError:
    """``trusted``: the details are a domain error's own message, safe whatever the status."""
    shown = details if details and (trusted or kind.details_safe) else kind.message
    return _mapped(kind.status, shown, kind.type, code=kind.code)


def _from_grpc(exc: grpc.aio.AioRpcError, request_id: str) -> MappedError:
    details = exc.details() or ""
    by_text = (exc.code(), MESSAGE_TOO_LARGE) if MESSAGE_TOO_LARGE in details else None
    kind = OPENAI_ERROR_OF_STATUS.get(by_text or exc.code(), INTERNAL)
    if kind.status >= 500:
        log.error("%s: model service failed: %s %s", request_id, exc.code(), exc.details())
    return _from_status(kind, exc.details())


def _location(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts)


def _from_validation(errors: Sequence[Any]) -> MappedError:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return _mapped(400, "the request body is not valid JSON", "invalid_request_error")
    where = _location(first.get("loc", ()))
    # pydantic prefixes a validator's own message with "Value error, "; clients need only ours
    text = str(first["msg"]).removeprefix("Value error, ")
    message = f"{where}: {text}" if where else text
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more errors)"
    return _mapped(400, message, "invalid_request_error", param=where or None)


def map_exception(exc: BaseException, request_id: str = "") -> MappedError:
    """The status and OpenAI body for any exception. A task group's ExceptionGroup is mapped
    by its first error: that one failure is what ended the request. What a client may not see
    is logged with ``request_id``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, ApiError):
        return _mapped(exc.status, str(exc), exc.type, exc.param, exc.code)
    if isinstance(exc, RequestValidationError):
        return _from_validation(exc.errors())
    if isinstance(exc, pydantic.ValidationError):
        return _from_validation(exc.errors(include_input=False))
    if isinstance(exc, ServiceError) and status_of(exc) in OPENAI_ERROR_OF_STATUS:
        return _from_status(OPENAI_ERROR_OF_STATUS[status_of(exc)], str(exc), trusted=True)
    if isinstance(exc, grpc.aio.AioRpcError):
        return _from_grpc(exc, request_id)
    if isinstance(exc, HTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        mapped = _mapped(exc.status_code, str(exc.detail), kind)
        mapped.headers.update(exc.headers or {})  # e.g. Allow on 405, as RFC 9110 requires
        return mapped
    if isinstance(exc, TimeoutError):
        return _from_status(OPENAI_ERROR_OF_STATUS[grpc.StatusCode.DEADLINE_EXCEEDED], None)
    log.error("%s: unexpected error", request_id, exc_info=exc)
    return _mapped(INTERNAL.status, INTERNAL.message, INTERNAL.type)


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    return map_exception(exc, getattr(request.state, "request_id", "")).response()


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as OpenAI's {"error": {...}}; no per-route try/except. The expected
    kinds are named so Starlette handles them in place; ``Exception`` catches the rest."""
    expected = (
        ApiError, ServiceError, grpc.aio.AioRpcError, TimeoutError, HTTPException,
        RequestValidationError, pydantic.ValidationError, ExceptionGroup,
    )  # fmt: skip
    for kind in (*expected, Exception):
        app.add_exception_handler(kind, _handle)
