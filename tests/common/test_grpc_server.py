"""The shared bootstrap: domain errors become status codes, anything else a bland INTERNAL."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import ClassVar

import grpc
import pytest

from autoglm.v1 import decoder_pb2, decoder_pb2_grpc
from services.common.config import ServiceConfig
from services.common.errors import InvalidInput, NotReady, Overloaded, TooLarge
from services.common.grpc_server import ErrorInterceptor, Slot, serve
from services.common.health import is_serving
from testkit.processes import free_port


class Raising(decoder_pb2_grpc.DecoderServicer):
    """Raises whatever the request id names, before or after streaming a first response."""

    errors: ClassVar[dict[str, Exception]] = {
        "invalid": InvalidInput("bad ids"),
        "too-large": TooLarge("prompt too long"),
        "busy": Overloaded("queue full"),
        "loading": NotReady("still loading"),
        "bug": RuntimeError("secret at 0x7f00 in /srv/app.py"),
    }

    async def Info(self, request, context):  # type: ignore[no-untyped-def]
        Slot[int]().get()  # raises NotReady: nothing was loaded

    async def Generate(self, request, context) -> AsyncIterator[decoder_pb2.GenerateResponse]:  # type: ignore[no-untyped-def]
        yield decoder_pb2.GenerateResponse(token_ids=[1])
        raise self.errors[request.request_id]


@pytest.fixture
async def stub() -> AsyncIterator[decoder_pb2_grpc.DecoderStub]:
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    decoder_pb2_grpc.add_DecoderServicer_to_server(Raising(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield decoder_pb2_grpc.DecoderStub(channel)
    await server.stop(None)


@pytest.mark.parametrize(
    ("kind", "code", "message"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "bad ids"),
        ("too-large", grpc.StatusCode.OUT_OF_RANGE, "prompt too long"),
        ("busy", grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"),
        ("loading", grpc.StatusCode.UNAVAILABLE, "still loading"),
        ("bug", grpc.StatusCode.INTERNAL, "internal error"),
    ],
)
async def test_streaming_errors_map_to_status_codes(
    stub: decoder_pb2_grpc.DecoderStub, kind: str, code: grpc.StatusCode, message: str
) -> None:
    call = stub.Generate(decoder_pb2.GenerateRequest(request_id=kind))
    first = await call.read()
    assert list(first.token_ids) == [1]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == code
    assert raised.value.details() == message


async def test_unary_errors_map_too_and_never_leak_internals(
    stub: decoder_pb2_grpc.DecoderStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Info(decoder_pb2.DecoderInfoRequest())
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "loading" in raised.value.details()


async def test_health_watch_streams_through_the_interceptor() -> None:
    """grpc_health's Watch writes with context.write instead of yielding."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await servicer.set("svc", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="svc")
        )
        first = await call.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        call.cancel()
    await server.stop(None)


async def test_a_service_that_breaks_turns_not_serving_until_stopped() -> None:
    """serve()'s ``broken`` (the decoder's engine thread died): the named health turns
    NOT_SERVING, so probes and the gateway's /health see it, and SIGTERM still stops it."""
    config = ServiceConfig(port=free_port())
    broken = asyncio.Event()
    serving = asyncio.create_task(
        serve(config, service_name="autoglm.v1.Decoder", add_servicer=lambda server: None,
              load=lambda: None, broken=broken)
    )  # fmt: skip
    async with grpc.aio.insecure_channel(f"127.0.0.1:{config.port}") as channel:
        for _ in range(100):
            if await is_serving(channel, "autoglm.v1.Decoder"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("never SERVING")
        broken.set()
        await asyncio.sleep(0.2)
        assert not await is_serving(channel, "autoglm.v1.Decoder")
    os.kill(os.getpid(), signal.SIGTERM)  # serve()'s own handler: it stops, nothing else
    await asyncio.wait_for(serving, timeout=15)
