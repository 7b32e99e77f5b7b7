"""The gateway in front of an imported GLM-4.1V bundle: it says which modalities the model takes,
waits only for the services the bundle needs, and refuses audio with a reason."""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bundle.hf_import import import_checkpoint
from testkit.media import audio_bytes
from testkit.processes import ServiceProcess, free_port, spawn

pytestmark = pytest.mark.stack


def wait_answering(process: ServiceProcess, timeout_s: float = 180.0) -> None:
    """Until its HTTP server answers (/health is 503 here: nothing behind it is up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.proc.poll() is None, process.log_tail()
        try:
            httpx.get(f"{process.url}/health", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.25)
    raise TimeoutError(process.log_tail())


@pytest.fixture(scope="module")
def gateway(glm4v_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway alone (no encoder, no decoder behind it): what it answers before any call."""
    root = tmp_path_factory.mktemp("glm4v-gateway")
    bundle = import_checkpoint(shutil.copytree(glm4v_checkpoint, root / "checkpoint")).root
    nowhere = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    process: ServiceProcess = spawn(
        "gateway",
        bundle,
        root,
        args=[
            "--vision-target", nowhere[0],
            "--audio-target", nowhere[1],
            "--decoder-target", nowhere[2],
        ],
    )  # fmt: skip
    try:
        wait_answering(process)
        yield process.url
    finally:
        process.stop()


def test_models_lists_the_modalities(gateway: str) -> None:
    card = httpx.get(f"{gateway}/v1/models", timeout=10).json()["data"][0]
    assert card["modalities"] == ["text", "image"]


def test_health_asks_only_the_services_the_bundle_needs(gateway: str) -> None:
    health = httpx.get(f"{gateway}/health", timeout=10)
    assert health.status_code == 503
    assert set(health.json()["services"]) == {"autoglm.v1.VisionEncoder", "autoglm.v1.Decoder"}


def test_audio_is_a_400_saying_the_model_has_no_audio_encoder(gateway: str) -> None:
    clip = base64.b64encode(audio_bytes()).decode()
    body = {
        "model": "autoglm-phone-9b",
        "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
        ]}],
    }  # fmt: skip
    reply = httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 400
    assert "no audio encoder" in reply.json()["error"]["message"]
