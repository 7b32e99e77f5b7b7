"""The internal gRPC services authenticate their callers with a shared token in metadata.

Without the token, or with a wrong one, every call is UNAUTHENTICATED; the gateway's channel
sends it; the health service answers anyone, so probes need no secret.
"""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from autoglm.v1 import decoder_pb2, decoder_pb2_grpc
from services.common import auth
from services.common.config import ServiceConfig
from tests.common.internal_server import generated, health_status, running
from tests.deploy.autoglm_args import service_config

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "internal-token"
    assert auth.write_token_file(path)
    return path


@pytest.fixture
def config(token_file: Path) -> ServiceConfig:
    return ServiceConfig(host="127.0.0.1", port=0, internal_token_file=token_file)


async def refused_code(target: str, metadata: tuple[tuple[str, str], ...]) -> list[str]:
    """The status of a unary and of a streaming call sent with ``metadata``."""
    codes = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = decoder_pb2_grpc.DecoderStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.Info(decoder_pb2.DecoderInfoRequest(), metadata=metadata, timeout=10)
        codes.append(unary.value.code().name)
        call = stub.Generate(decoder_pb2.GenerateRequest(), metadata=metadata, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as stream:
            await call.read()
        codes.append(stream.value.code().name)
        assert stream.value.details() == unary.value.details() == auth.REFUSED
    return codes


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong"),),
        (("authorization", "Bearer "),),
        (("authorization", "Basic abc"),),
    ],
    ids=["none", "wrong", "empty", "other-scheme"],
)
async def test_calls_without_the_right_token_are_unauthenticated(
    config: ServiceConfig, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with running(config) as target:
        assert await refused_code(target, metadata) == ["UNAUTHENTICATED", "UNAUTHENTICATED"]


async def test_the_token_with_extra_characters_or_twice_is_refused(
    config: ServiceConfig, token_file: Path
) -> None:
    token = token_file.read_text().strip()
    async with running(config) as target:
        for metadata in (
            (("authorization", f"Bearer {token}x"),),
            (("authorization", f"Bearer {token[:-1]}"),),
            (("authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}")),
        ):
            assert await refused_code(target, metadata) == ["UNAUTHENTICATED"] * 2


async def test_the_internal_channel_sends_the_token(config: ServiceConfig) -> None:
    async with running(config) as target, auth.internal_channel(target, config, []) as channel:
        stub = decoder_pb2_grpc.DecoderStub(channel)
        info = await stub.Info(
            decoder_pb2.DecoderInfoRequest(), metadata=(("x-request-id", "r1"),), timeout=10
        )
        assert info.model == "fixed"
        assert await generated(stub) == [1, 2, 3]


async def test_health_answers_without_the_token(config: ServiceConfig) -> None:
    async with running(config) as target, grpc.aio.insecure_channel(target) as channel:
        assert await health_status(channel) == SERVING


async def test_a_channel_with_another_token_is_refused(
    config: ServiceConfig, tmp_path: Path
) -> None:
    other = tmp_path / "other-token"
    assert auth.write_token_file(other)
    client = dataclasses.replace(config, internal_token_file=other)
    async with running(config) as target, auth.internal_channel(target, client, []) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await decoder_pb2_grpc.DecoderStub(channel).Info(decoder_pb2.DecoderInfoRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_without_a_token_file_the_check_is_off() -> None:
    config = ServiceConfig(host="127.0.0.1", port=0)
    assert auth.server_interceptors(config) == []
    async with running(config) as target, grpc.aio.insecure_channel(target) as channel:
        assert await generated(decoder_pb2_grpc.DecoderStub(channel)) == [1, 2, 3]


def test_reflection_answers_without_the_token_only_when_enabled() -> None:
    assert auth.open_services(ServiceConfig()) == ("grpc.health.v1.Health",)
    assert auth.open_services(ServiceConfig(enable_reflection=True)) == (
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    )


def test_token_files_are_random_private_and_never_overwritten(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert auth.write_token_file(first) and auth.write_token_file(second)
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    token = auth.read_token(first)
    assert len(token) >= 40 and token != auth.read_token(second)
    assert not auth.write_token_file(first)
    assert auth.read_token(first) == token


@pytest.mark.parametrize(
    ("content", "message"), [(None, "cannot read"), ("  \n", "is empty")], ids=["missing", "empty"]
)
def test_an_unusable_token_file_stops_the_start_with_a_clear_message(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as stopped:
        auth.server_interceptors(ServiceConfig(internal_token_file=path))
    assert message in str(stopped.value) and str(path) in str(stopped.value)


def test_serve_binds_loopback_without_reflection_unless_told() -> None:
    config = service_config(["serve", "vision"], {})
    assert (config.host, config.enable_reflection, config.internal_token_file) == (
        "127.0.0.1",
        False,
        None,
    )
    told = service_config(
        ["serve", "vision", "--host", "0.0.0.0", "--enable-reflection"],
        {"AUTOGLM_INTERNAL_TOKEN_FILE": "/run/secrets/token"},
    )
    assert (told.host, told.enable_reflection) == ("0.0.0.0", True)
    assert told.internal_token_file == Path("/run/secrets/token")
