"""Domain errors. Model and engine code raise these; one gRPC interceptor maps them to status
codes (``services.common.grpc_server``) and the gateway maps those to OpenAI errors."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of the errors whose message is safe to show to a client."""


class InvalidInput(ServiceError):
    """The request is malformed or its media cannot be decoded (gRPC INVALID_ARGUMENT)."""


class TooLarge(InvalidInput):
    """The request can never fit: too many tokens, media too large (gRPC OUT_OF_RANGE)."""


class Overloaded(ServiceError):
    """The server is full right now; retrying later can succeed (gRPC RESOURCE_EXHAUSTED)."""


class NotReady(ServiceError):
    """The model is still loading or the server is shutting down (gRPC UNAVAILABLE)."""
