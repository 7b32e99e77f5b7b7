"""The vision encoder's settings: `autoglm serve vision`'s flags (no torch imported here)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from services.encoder.config import EncoderConfig, limit


@dataclasses.dataclass(frozen=True)
class VisionConfig(EncoderConfig, env_prefix="VISION", port=50051, max_items=64, batch_size=16):
    NOUNS: ClassVar[tuple[str, str]] = ("images", "images")

    max_image_bytes: int = limit(20 * 1024 * 1024, "largest encoded image file")
    max_image_pixels: int = limit(40_000_000, "largest width*height, read from the header")
