"""A real service process with the internal token: callers without it are refused, callers with
it are served, and the health probe and (when enabled) reflection need no token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from autoglm.v1 import encoder_pb2, vision_pb2_grpc
from services import health_probe
from services.common import auth
from services.common.health import VISION_SERVICE
from testkit.processes import ServiceProcess, spawn

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "internal-token"
    auth.write_token_file(path)
    return path


@pytest.fixture(scope="module")
def vision(
    bundle_dir: Path, token_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    args = ["--device", "cpu", "--internal-token-file", str(token_file), "--enable-reflection"]
    process = spawn("vision", bundle_dir, tmp_path_factory.mktemp("vision-logs"), args=args)
    try:
        process.wait_ready()  # the health service answers without the token
        yield process
    finally:
        process.stop()


def info(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> int:
    reply = vision_pb2_grpc.VisionEncoderStub(channel).Info(
        encoder_pb2.EncoderInfoRequest(), metadata=metadata, timeout=30
    )
    return int(reply.max_items)


@pytest.mark.parametrize("sent", [None, "not-the-token"], ids=["without", "wrong"])
def test_a_caller_without_the_token_is_unauthenticated(
    vision: ServiceProcess, sent: str | None
) -> None:
    metadata = () if sent is None else (("authorization", f"Bearer {sent}"),)
    with grpc.insecure_channel(vision.target) as channel, pytest.raises(grpc.RpcError) as refused:
        info(channel, metadata)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert refused.value.details() == auth.REFUSED  # type: ignore[attr-defined]


def test_a_caller_with_the_token_is_served(vision: ServiceProcess, token_file: Path) -> None:
    token = token_file.read_text().strip()
    with grpc.insecure_channel(vision.target) as channel:
        assert info(channel, (("authorization", f"Bearer {token}"),)) >= 1


def test_health_and_reflection_answer_without_the_token(vision: ServiceProcess) -> None:
    assert health_probe.main([vision.target, VISION_SERVICE]) == 0
    with grpc.insecure_channel(vision.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=VISION_SERVICE), timeout=30
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([listing]), timeout=30
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {VISION_SERVICE, "grpc.health.v1.Health"} <= names
