"""The audio encoder's settings: `autoglm serve audio`'s flags (no torch imported here)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from services.encoder.config import EncoderConfig, limit


@dataclasses.dataclass(frozen=True)
class AudioConfig(EncoderConfig, env_prefix="AUDIO", port=50052, max_items=16, batch_size=4):
    NOUNS: ClassVar[tuple[str, str]] = ("clips", "windows")

    window_seconds: float = limit(
        30.0, "long clips are encoded in windows this long, so attention stays bounded"
    )
    max_audio_bytes: int = limit(25 * 1024 * 1024, "largest encoded audio file")
    max_audio_seconds: float = limit(600.0, "longest clip, read from the header")
