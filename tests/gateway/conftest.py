"""Clients of the session's stack, and a second, strictly configured gateway in front of the
same three services (API key, small limits, a short deadline, reasoning kept inline)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from testkit.processes import ServiceProcess, spawn
from tests.conftest import Stack

MODEL = "autoglm-phone-9b"
STRICT_KEY = "sk-test-gateway"


@pytest.fixture(scope="session")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key="EMPTY", max_retries=0, timeout=120)


@pytest.fixture
def async_client(stack: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.base_url, api_key="EMPTY", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def strict_gateway(
    stack: Stack, bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    gateway = spawn(
        "gateway",
        bundle_dir,
        tmp_path_factory.mktemp("strict-gateway"),
        args=[
            "--vision-target", stack.vision.target,
            "--audio-target", stack.audio.target,
            "--decoder-target", stack.decoder.target,
            "--api-key", STRICT_KEY,
            "--max-body-mb", "1",
            "--max-images-per-request", "2",
            "--request-timeout-s", "3",
            "--keep-reasoning-inline",
            "--image-url-allowlist", "127.0.0.1",
        ],
    )  # fmt: skip
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="session")
def strict_client(strict_gateway: ServiceProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{strict_gateway.url}/v1", api_key=STRICT_KEY, max_retries=0, timeout=60
    )
