"""The vision encoder's settings. Light on purpose: the CLI imports it to build the flags of
`autoglm serve vision`, so nothing heavy (no torch) is imported here."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from services.common.encoder_config import EncoderConfig, help_text


@dataclasses.dataclass(frozen=True)
class VisionConfig(EncoderConfig):
    ENV_PREFIX: ClassVar[str] = "VISION"

    port: int = 50051
    max_items: int = dataclasses.field(default=64, metadata=help_text("most images per request"))
    batch_size: int = dataclasses.field(
        default=16, metadata=help_text("images per forward pass of the tower")
    )
    max_image_bytes: int = dataclasses.field(
        default=20 * 1024 * 1024, metadata=help_text("largest encoded image file")
    )
    max_image_pixels: int = dataclasses.field(
        default=40_000_000, metadata=help_text("largest width*height, read from the header")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("max_image_bytes", "max_image_pixels")
