"""Encoder services as real processes (with the health statuses they showed while starting),
the contract every encoder service keeps, and structured test clips."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import grpc
import numpy as np
import pytest
import soundfile
import torch
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from autoglm.v1 import encoder_pb2
from services.common.grpc_server import channel_options
from services.common.health import AUDIO_SERVICE, VISION_SERVICE
from services.encoder.types import (
    EncoderInfo,
    MediaItem,
    encode_request_to_pb,
    encode_response_from_pb,
)
from services.vision.config import VisionConfig
from testkit.processes import START_TIMEOUT_S, ServiceProcess, spawn

HEALTH_NAMES = {"vision": VISION_SERVICE, "audio": AUDIO_SERVICE}
# Retry the first connection every few ms, so health is asked before the load ends.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 50),
]
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclasses.dataclass
class Started:
    process: ServiceProcess
    service: str  # the gRPC service, which is also the named health service
    # Every status of the named health service, from the first moment it answered.
    startup_statuses: list[int]


def start_encoder(kind: str, bundle_dir: Path, log_dir: Path, args: Sequence[str]) -> Started:
    """Spawn `autoglm serve KIND` and follow its named health status until SERVING."""
    process = spawn(kind, bundle_dir, log_dir, args=args)
    try:
        statuses = asyncio.run(_poll_until_serving(process.target, HEALTH_NAMES[kind]))
    except grpc.aio.AioRpcError as exc:
        process.stop()
        raise RuntimeError(
            f"{kind} never became SERVING ({exc.code()}):\n{process.log_tail()}"
        ) from None
    return Started(process, HEALTH_NAMES[kind], statuses)


async def _poll_until_serving(target: str, service: str) -> list[int]:
    """Ask every few ms from the first moment the port answers; record each change."""
    seen: list[int] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    async with grpc.aio.insecure_channel(target, options=FAST_RECONNECT) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while not seen or seen[-1] != SERVING:
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service=service),
                wait_for_ready=True,
                timeout=max(deadline - time.monotonic(), 0.001),
            )
            if not seen or seen[-1] != reply.status:
                seen.append(reply.status)
            await asyncio.sleep(0.005)
    return seen


def client_channel(target: str) -> grpc.aio.Channel:
    """A channel with the services' own message limits (256 MiB by default, not gRPC's 4)."""
    return grpc.aio.insecure_channel(target, options=channel_options(VisionConfig()))


def reflection(target: str, service: str) -> tuple[list[str], list[str]]:
    """What server reflection tells a client: every service listed, and `service`'s methods."""
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = list(database.get_services())
        methods = [m.name for m in DescriptorPool(database).FindServiceByName(service).methods]
    return services, methods


def speech_like(seconds: float, rate: int, seed: int = 0, noise: float = 0.01) -> np.ndarray:
    """A gliding two-harmonic tone with a syllable-like envelope and a little noise."""
    t = np.arange(int(seconds * rate)) / rate
    # Pitch 140 +- 60 Hz, gliding at 0.7 Hz; the phase is its exact integral, so the same
    # sound comes out at any sampling rate.
    phase = 2 * np.pi * 140 * t - 60 / 0.7 * np.cos(2 * np.pi * 0.7 * t + seed)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + seed) ** 2
    wave = envelope * (0.4 * np.sin(phase) + 0.2 * np.sin(3 * phase))
    wave += noise * np.random.default_rng(seed).standard_normal(t.shape)
    return wave.astype(np.float32)


def encoded_audio(
    samples: np.ndarray, rate: int, format: str = "WAV", subtype: str = "PCM_16"
) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format=format, subtype=subtype)
    return out.getvalue()


async def encode(stub: Any, data: list[bytes]) -> list[torch.Tensor]:
    """Encode ``data`` through a VisionEncoder or AudioEncoder stub, one item per bytes."""
    reply = await stub.Encode(encode_request_to_pb([MediaItem(d) for d in data]))
    return [embedding.tensor for embedding in encode_response_from_pb(reply)]


async def assert_item_refused(
    stub: Any, good: bytes, bad: bytes, code: grpc.StatusCode, message: str
) -> None:
    """A request whose second item is bad is refused as a whole, naming item 1 and the fault."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await encode(stub, [good, bad])
    assert raised.value.code() == code
    assert raised.value.details().startswith("item 1: ")
    assert message in raised.value.details()


class EncoderServiceContract:
    """What every encoder service keeps, whatever its kind. A test module subclasses it (as
    ``Test...``) with its tower's architecture, width and item limit; the ``started`` and
    ``stub`` fixtures are its own (tests/encoders/conftest.py)."""

    TOWER: ClassVar[str]
    HIDDEN: ClassVar[int]
    MAX_ITEMS: ClassVar[int]

    async def test_info_describes_the_int8_tower(self, stub: Any) -> None:
        info = EncoderInfo.from_pb(await stub.Info(encoder_pb2.EncoderInfoRequest()))
        assert info == EncoderInfo(
            model=self.TOWER,
            device="cpu",
            dtype="float32",
            quantization="int8",
            hidden_size=self.HIDDEN,
            max_items=self.MAX_ITEMS,
        )

    async def test_health_is_named_not_serving_until_loaded_and_overall_serving(
        self, started: Started
    ) -> None:
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert started.startup_statuses == [not_serving, SERVING]
        async with client_channel(started.process.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", started.service):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == SERVING

    def test_reflection_lists_the_service(self, started: Started) -> None:
        """Server reflection lists the encoder (Encode, Info) and the health service."""
        services, methods = reflection(started.process.target, started.service)
        assert started.service in services
        assert "grpc.health.v1.Health" in services
        assert sorted(methods) == ["Encode", "Info"]
