"""The audio encoder's settings: `autoglm serve audio`'s flags (no torch imported here)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from services.common.config import limit
from services.encoder.config import EncoderConfig


@dataclasses.dataclass(frozen=True)
class AudioConfig(EncoderConfig):
    ENV_PREFIX: ClassVar[str] = "AUDIO"

    port: int = 50052
    window_seconds: float = limit(
        30.0, "long clips are encoded in windows this long, so attention stays bounded"
    )
    max_audio_bytes: int = limit(25 * 1024 * 1024, "largest encoded audio file")
    max_audio_seconds: float = limit(600.0, "longest clip, read from the header")
    max_request_audio_samples: int = limit(
        64_000_000,
        "most samples one request's clips decode to (channels x rate x duration, from headers)",
    )
    # EncoderConfig's batching, restated with this kind's defaults and nouns (a restated
    # field keeps its place among the flags).
    max_items: int = limit(16, "most clips per request")
    batch_size: int = limit(4, "windows per forward pass of the tower")
