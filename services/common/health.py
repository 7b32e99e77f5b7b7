"""Client side of grpc.health.v1: ask a service, by name, whether it is SERVING."""

from __future__ import annotations

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
