"""The one shape of the services' gRPC server interceptors: each looks at a found method's
handler and answers it, or another in its place (the token check, the error mapping)."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable

import grpc


class HandlerInterceptor(grpc.aio.ServerInterceptor, abc.ABC):
    """A server interceptor that may replace a method's handler; a method the server does not
    have (its handler None) passes through untouched, so gRPC answers UNIMPLEMENTED."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self.replace(handler, handler_call_details)

    @abc.abstractmethod
    def replace(
        self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        """The handler that serves the call: ``handler`` itself or one wrapped around it."""
