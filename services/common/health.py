"""Client side of grpc.health.v1: ask a service, by name, whether it is SERVING."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The named services; the overall status "" is SERVING from the start, so ask for these.
VISION_SERVICE = "autoglm.v1.VisionEncoder"
AUDIO_SERVICE = "autoglm.v1.AudioEncoder"
DECODER_SERVICE = "autoglm.v1.Decoder"


async def is_serving(channel: grpc.aio.Channel, service: str, timeout: float = 1.0) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_serving(target: str, service: str, timeout: float) -> bool:
    """Block until `service` at `target` reports SERVING, or the timeout passes."""

    async def poll() -> bool:
        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(target) as channel:
            while time.monotonic() < deadline:
                if await is_serving(channel, service):
                    return True
                await asyncio.sleep(0.2)
        return False

    return asyncio.run(poll())
