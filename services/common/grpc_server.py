"""What every gRPC service shares: the server bootstrap, health, reflection, error mapping.

A service supplies a servicer, the full name of its gRPC service and a blocking ``load``
function. ``serve`` starts listening at once with the named health status NOT_SERVING (the
overall status "" is SERVING from the start, so probes must ask for the name), loads the model
in a worker thread, flips the name to SERVING, and on SIGTERM/SIGINT turns NOT_SERVING, stops
taking calls and lets running ones finish within a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import auth
from services.common.config import ServiceConfig
from services.common.errors import NotReady, ServiceError, status_of
from services.common.interceptor import HandlerInterceptor

log = logging.getLogger(__name__)
T = TypeVar("T")

SHUTDOWN_GRACE_S = 10.0


class Slot(Generic[T]):
    """Holds what ``load`` builds; calls made before it is there get UNAVAILABLE."""

    def __init__(self) -> None:
        self._value: T | None = None

    def set(self, value: T) -> None:
        self._value = value

    def get(self) -> T:
        if self._value is None:
            raise NotReady("the model is still loading")
        return self._value


class ErrorInterceptor(HandlerInterceptor):
    """Maps domain errors to status codes (``errors.STATUS_OF_ERROR``); anything else is logged
    and becomes INTERNAL with a fixed message, so no exception text (paths, addresses) reaches a
    client."""

    def replace(
        self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _guard_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            # Streaming handlers either yield (ours) or write through context.write and return
            # (grpc_health's Watch): only the first kind is an async generator to iterate.
            stream = handler.unary_stream
            guard = _guard_stream if inspect.isasyncgenfunction(stream) else _guard_unary
            return grpc.unary_stream_rpc_method_handler(
                guard(stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    if isinstance(exc, ServiceError):
        await context.abort(status_of(exc), str(exc))
    log.exception("unhandled error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _guard_unary(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return guarded


def _guard_stream(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return guarded


# HTTP/2 keepalive: a peer that stops answering pings (a stopped or vanished process, a dead
# connection the kernel has not noticed) fails its calls within ~15 s instead of hanging.
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000


def channel_options(config: ServiceConfig) -> list[tuple[str, int]]:
    """Message limits and keepalive, for channels and servers alike."""
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


# A server accepts its clients' keepalive pings at that pace (by default it would answer pings
# more often than every 5 minutes with GOAWAY "too_many_pings").
SERVER_KEEPALIVE = [
    ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    ("grpc.http2.max_ping_strikes", 0),
]


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


async def serve(
    config: ServiceConfig,
    *,
    service_name: str,
    add_servicer: Callable[[grpc.aio.Server], None],
    load: Callable[[], None],
    on_stop: Callable[[], Awaitable[None]] | None = None,
    broken: asyncio.Event | None = None,
) -> None:
    """Run one gRPC service until SIGTERM/SIGINT. ``load`` runs in a thread after listening.
    Once ``broken`` is set (the service cannot serve any more) its health turns NOT_SERVING."""
    server = grpc.aio.server(
        interceptors=[*auth.server_interceptors(config), ErrorInterceptor()],
        options=[*channel_options(config), *SERVER_KEEPALIVE, ("grpc.so_reuseport", 0)],
    )
    add_servicer(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(service_name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if config.enable_reflection:
        reflection.enable_server_reflection(
            (service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    port = auth.listen(server, config)
    await server.start()
    log.info("%s listening on %s:%d", service_name, config.host, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    loading = asyncio.ensure_future(asyncio.to_thread(load))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        loading.result()  # a failed load ends the process with its traceback
        await health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s ready", service_name)
        breaking = asyncio.ensure_future((broken or asyncio.Event()).wait())
        await asyncio.wait({stopping, breaking}, return_when=asyncio.FIRST_COMPLETED)
        if breaking.done():
            log.error("%s cannot serve any more: NOT_SERVING until restarted", service_name)
            await health_servicer.set(service_name, health_pb2.HealthCheckResponse.NOT_SERVING)
            await stopping
        breaking.cancel()

    log.info("%s shutting down", service_name)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(SHUTDOWN_GRACE_S)
    if on_stop is not None:
        await on_stop()
    with contextlib.suppress(asyncio.CancelledError):
        loading.cancel()
