"""A real gRPC server with the services' caller checks, in the test's own event loop.

It serves the Decoder API (a fixed answer) and the health service, installed and bound the way
``services.common.grpc_server.serve`` does it, so the tests drive the real interceptors,
credentials and channels without loading a model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from autoglm.v1 import decoder_pb2, decoder_pb2_grpc
from services.common import auth
from services.common.config import ServiceConfig
from services.common.grpc_server import ErrorInterceptor


class FixedDecoder(decoder_pb2_grpc.DecoderServicer):
    async def Info(self, request, context):  # type: ignore[no-untyped-def]
        return decoder_pb2.DecoderInfo(model="fixed")

    async def Generate(self, request, context) -> AsyncIterator[decoder_pb2.GenerateResponse]:  # type: ignore[no-untyped-def]
        for token in (1, 2, 3):
            yield decoder_pb2.GenerateResponse(token_ids=[token])


@asynccontextmanager
async def running(config: ServiceConfig) -> AsyncIterator[str]:
    """Serve with ``config``'s token and TLS settings on a free loopback port; its address."""
    server = grpc.aio.server(interceptors=[*auth.server_interceptors(config), ErrorInterceptor()])
    decoder_pb2_grpc.add_DecoderServicer_to_server(FixedDecoder(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = auth.listen(server, config)
    await server.start()
    try:
        yield f"{config.host}:{port}"
    finally:
        await server.stop(None)


async def generated(stub: decoder_pb2_grpc.DecoderStub) -> list[int]:
    call = stub.Generate(decoder_pb2.GenerateRequest(request_id="r"), timeout=10)
    return [token async for reply in call for token in reply.token_ids]


async def health_status(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=10
    )
    return int(reply.status)
