"""How fast an encoder process stops on SIGTERM, the way an orchestrator stops it: at once while
its model is still loading, and within the shutdown grace while its tower is busy. (Idle: every
encoder service module's fixture times its stop, tests/encoders/conftest.py.)"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autoglm.v1 import audio_pb2_grpc
from services.common.grpc_server import SHUTDOWN_GRACE_S
from services.common.health import AUDIO_SERVICE
from services.encoder.types import MediaItem, encode_request_to_pb
from testkit.media import audio_bytes
from testkit.processes import ServiceProcess, spawn
from tests.encoders.conftest import IDLE_STOP_S
from tests.encoders.helpers import FAST_RECONNECT, client_channel, start_encoder

pytestmark = pytest.mark.stack

ARGS = ["--device", "cpu"]


def stop_seconds(process: ServiceProcess) -> float:
    started = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(60) == 0, process.log_tail()
    return time.monotonic() - started


async def test_an_encoder_still_loading_its_model_stops_at_once(
    bundle_dir: Path, tmp_path: Path
) -> None:
    process = spawn("audio", bundle_dir, tmp_path, ARGS)
    try:
        async with grpc.aio.insecure_channel(process.target, options=FAST_RECONNECT) as channel:
            # the port answers health (NOT_SERVING) while the model loads and warms up
            while (status := await _health(channel)) is None:
                assert process.proc.poll() is None, process.log_tail()
                await asyncio.sleep(0.05)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert stop_seconds(process) < IDLE_STOP_S
    finally:
        process.stop()


async def test_a_busy_encoder_stops_within_the_shutdown_grace(
    bundle_dir: Path, tmp_path: Path
) -> None:
    started = await asyncio.to_thread(start_encoder, "audio", bundle_dir, tmp_path, ARGS)
    process = started.process
    try:
        # many calls of long clips: the tower is busy for longer than the test waits
        request = encode_request_to_pb([MediaItem(audio_bytes(60.0, seed=i)) for i in range(4)])
        async with client_channel(process.target) as channel:
            stub = audio_pb2_grpc.AudioEncoderStub(channel)
            calls = [asyncio.ensure_future(stub.Encode(request)) for _ in range(16)]
            await asyncio.sleep(2.0)
            assert not all(call.done() for call in calls), "the encoder was not kept busy"
            seconds = await asyncio.to_thread(stop_seconds, process)
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert seconds < SHUTDOWN_GRACE_S + IDLE_STOP_S
        ended = {o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)}
        assert ended <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
        print(f"busy encoder stopped in {seconds:.2f} s; calls ended with {ended}")
    finally:
        process.stop()


async def _health(channel: grpc.aio.Channel) -> int | None:
    """The encoder's named health status, None while its port does not answer."""
    check = health_pb2.HealthCheckRequest(service=AUDIO_SERVICE)
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(check, timeout=1.0)
    except grpc.aio.AioRpcError:
        return None
    return int(reply.status)
