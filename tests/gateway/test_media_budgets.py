"""Media counted from headers before any encoder runs (issue 11, point 3): each item's prompt
tokens as the bundle's encoder will give them (never more), so a prompt that cannot fit is a
400 ``context_length_exceeded`` while the encoders have done nothing, and a request with two
300-second clips is refused with the gateway's memory bounded."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from bundle.layout import Bundle
from gateway.media import Header
from gateway.media_tokens import MediaTokenCounter
from services.audio.config import AudioConfig
from services.audio.model import load_encoder as load_audio
from services.vision.config import VisionConfig
from services.vision.model import load_encoder as load_vision
from testkit.media import audio_bytes
from testkit.processes import ServiceProcess, spawn
from tests.gateway.in_process import chat_body, in_process, unserved_config
from tests.memory import peak_growth_bytes

MIB = 1024 * 1024


def rows(encoder: object, data: bytes) -> int:
    decoded = encoder.decode(data)  # type: ignore[attr-defined]
    return int(encoder.encode([decoded])[0].tensor.shape[0])  # type: ignore[attr-defined]


def test_header_counts_never_exceed_what_the_encoders_give(bundle_dir: Path) -> None:
    counter = MediaTokenCounter.for_bundle(Bundle.load(bundle_dir), None)
    vision = load_vision(VisionConfig(bundle=bundle_dir, device="cpu", quantization="none"))
    for size in ((64, 64), (480, 640), (31, 7)):
        image = io.BytesIO()
        Image.new("RGB", size[::-1], "gray").save(image, format="PNG")
        assert counter.image_tokens(*size) == rows(vision, image.getvalue())
    audio = load_audio(AudioConfig(bundle=bundle_dir, device="cpu", quantization="none"))
    for seconds, rate in ((2.5, 16_000), (3.0, 44_100), (65.0, 16_000)):  # 65 s: 3 windows
        clip = audio_bytes(seconds=seconds, rate=rate)
        counted = counter.audio_tokens(int(seconds * rate), rate)
        encoded = rows(audio, clip)
        assert counted <= encoded <= counted / 0.98 + 1, (seconds, rate, counted, encoded)


def test_a_headers_tokens_for_the_default_bundle(bundle_dir: Path) -> None:
    counter = MediaTokenCounter.for_bundle(Bundle.load(bundle_dir), None)
    five_minutes = Header(frames=300 * 16_000, rate=16_000, channels=1)
    assert 14_800 <= counter.audio_tokens(five_minutes.frames, five_minutes.rate) <= 15_000


@pytest.fixture(scope="module")
def decoder(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The decoder alone (unquantized): it tells the gateway its context length."""
    process: ServiceProcess = spawn(
        "decoder", bundle_dir, tmp_path_factory.mktemp("decoder"), args=["--quant", "none"]
    )
    try:
        process.wait_ready()
        yield process.target
    finally:
        process.stop()


def clip_part(seconds: float) -> dict[str, object]:
    data = base64.b64encode(audio_bytes(seconds=seconds, rate=16_000)).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


@pytest.mark.stack
def test_two_300_second_clips_are_refused_before_encoding(bundle_dir: Path, decoder: str) -> None:
    """The encoders' addresses answer nothing: had the gateway sent them anything, the answer
    would be a 503. The peak resident growth of the gateway (in this process) stays a small
    multiple of the 25 MB body."""
    config = unserved_config(bundle_dir, decoder_target=decoder)
    clip = clip_part(300.0)
    body = chat_body(messages=[{"role": "user", "content": [clip, clip]}])
    with in_process(config) as client:
        response, peak = peak_growth_bytes(lambda: client.post("/v1/chat/completions", json=body))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    print(f"peak gateway growth for two 300 s clips: {peak / MIB:.0f} MiB")
    assert peak < 400 * MIB
