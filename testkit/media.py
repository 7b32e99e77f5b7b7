"""Small, structured test media made on the fly: images with shapes, clips with tones."""

from __future__ import annotations

import base64
import io

import numpy as np
import soundfile
from PIL import Image, ImageDraw


def image_bytes(format: str = "PNG", size: tuple[int, int] = (96, 80), seed: int = 0) -> bytes:
    """A picture with a gradient and a few shapes, so encoders see structure, not noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    gradient = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    pixels = np.broadcast_to(gradient, (height, width, 3)).copy()
    pixels[..., 1] = np.uint8(rng.integers(0, 256))
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x, y, x + width // 3, y + height // 3), fill=color)
    out = io.BytesIO()
    image.save(out, format=format)
    return out.getvalue()


def audio_bytes(
    seconds: float = 1.0,
    rate: int = 16000,
    format: str = "WAV",
    subtype: str = "PCM_16",
    seed: int = 0,
) -> bytes:
    """A two-tone clip with a little noise; ``seed`` sets the lower tone's pitch and the noise."""
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * (440 + 110 * seed) * t) + 0.2 * np.sin(2 * np.pi * 1250 * t)
    wave += 0.01 * np.random.default_rng(seed).standard_normal(t.shape)
    out = io.BytesIO()
    soundfile.write(out, wave.astype(np.float32), rate, format=format, subtype=subtype)
    return out.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def silent_flac(seconds: int, rate: int, channels: int) -> bytes:
    """Real silence, written a second at a time (FLAC packs it to a few kB per minute)."""
    out = io.BytesIO()
    second = np.zeros((rate, channels), dtype=np.int16)
    with soundfile.SoundFile(out, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds):
            f.write(second)
    return out.getvalue()
