"""Small synthetic media, encoded as a client would send it: PNG images and WAV clips."""

from __future__ import annotations

import base64
import io

import numpy as np
import soundfile
from PIL import Image, ImageDraw


def png(seed: int, size: tuple[int, int] = (96, 80)) -> bytes:
    """A gradient with a few filled ellipses: structure for the encoder to see, not noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    pixels[..., 1] = np.uint8(rng.integers(0, 256))
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x, y, x + width // 3, y + height // 3), fill=color)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def wav(seconds: float, seed: int, rate: int = 16000) -> bytes:
    """Two tones (pitch set by ``seed``) with a little noise, 16-bit PCM."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    wave = 0.4 * np.sin(2 * np.pi * (220 + 110 * seed) * t) + 0.2 * np.sin(2 * np.pi * 1250 * t)
    wave += 0.01 * rng.standard_normal(t.shape)
    out = io.BytesIO()
    soundfile.write(out, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{b64(data)}"
