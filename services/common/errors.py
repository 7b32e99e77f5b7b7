"""Domain errors and the one table of the gRPC status each maps to. Model and engine code raise
these; the gRPC interceptor (``services.common.grpc_server``) aborts with ``status_of(exc)`` and
the gateway maps status codes to OpenAI errors (``gateway.errors``)."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base of the errors whose message is safe to show to a client."""


class InvalidInput(ServiceError):
    """The request is malformed or its media cannot be decoded."""


class TooLarge(InvalidInput):
    """The request can never fit: too many tokens, media too large."""


class Overloaded(ServiceError):
    """The server is full right now; retrying later can succeed."""


class NotReady(ServiceError):
    """The model is still loading or the server is shutting down."""


# Most specific first: TooLarge is an InvalidInput.
STATUS_OF_ERROR: tuple[tuple[type[ServiceError], grpc.StatusCode], ...] = (
    (TooLarge, grpc.StatusCode.OUT_OF_RANGE),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
)


def status_of(exc: ServiceError) -> grpc.StatusCode:
    """The gRPC status of a domain error; INTERNAL for one outside the table."""
    for kind, code in STATUS_OF_ERROR:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL
