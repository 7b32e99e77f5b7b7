"""The audio encoder's settings. Light on purpose: the CLI imports it to build the flags of
`autoglm serve audio`, so nothing heavy (no torch) is imported here."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from services.common.encoder_config import EncoderConfig, help_text


@dataclasses.dataclass(frozen=True)
class AudioConfig(EncoderConfig):
    ENV_PREFIX: ClassVar[str] = "AUDIO"

    port: int = 50052
    max_items: int = dataclasses.field(default=16, metadata=help_text("most clips per request"))
    batch_size: int = dataclasses.field(
        default=4, metadata=help_text("windows per forward pass of the tower")
    )
    window_seconds: float = dataclasses.field(
        default=30.0,
        metadata=help_text(
            "long clips are encoded in windows this long, so attention stays bounded"
        ),
    )
    max_audio_bytes: int = dataclasses.field(
        default=25 * 1024 * 1024, metadata=help_text("largest encoded audio file")
    )
    max_audio_seconds: float = dataclasses.field(
        default=600.0, metadata=help_text("longest clip, read from the header")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("window_seconds", "max_audio_bytes", "max_audio_seconds")
