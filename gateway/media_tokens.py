"""How many prompt tokens a media item becomes, from its header alone (before any encoder runs),
so a prompt that cannot fit the context is refused before the encoders spend anything on it.

Each count is what the bundle's encoder gives, or a little less, never more (a lower bound may
let a prompt through that the decoder later refuses; it must never refuse one that fits):
- GLM-4.1V: the grid ``positions.ImageLayout`` takes from the header (the image processor's
  ``smart_resize`` at the vision service's max_pixels), divided by the 2x2 merge: exact.
- SigLIP-style towers: (image_size / patch_size)^2 patches, whatever the image.
- Wav2Vec2-style towers: the conv front-end's output length for the clip resampled to the
  extractor's rate, less 1% for the frames the encoder's windows lose at their cuts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bundle.layout import Bundle

if TYPE_CHECKING:  # positions.py imports media.py, which imports this module
    from gateway.positions import ImageLayout

WINDOW_SLACK = 0.99  # 30 s windows lose under 0.1% of their frames at the cuts

ImageTokens = Callable[[int, int], int]  # (height, width) -> tokens
AudioTokens = Callable[[int, int], int]  # (frames, sample rate) -> tokens


def _json(folder: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((folder / name).read_text()))


def _patch_tokens(vision: Path) -> ImageTokens:
    config = _json(vision, "config.json")
    config = config.get("vision_config", config)
    per_side = int(config["image_size"]) // int(config["patch_size"])
    return lambda height, width: per_side * per_side


def _grid_tokens(layout: ImageLayout) -> ImageTokens:
    return lambda height, width: layout.tokens(layout.grid_of(height, width))


def _conv_frames(audio: Path) -> AudioTokens:
    config = _json(audio, "config.json")
    rate_out = int(_json(audio, "preprocessor_config.json")["sampling_rate"])
    layers = list(zip(config["conv_kernel"], config["conv_stride"], strict=True))

    def tokens(frames: int, rate: int) -> int:
        length = frames * rate_out // rate
        for kernel, stride in layers:
            length = max((length - kernel) // stride + 1, 0)
        return math.floor(length * WINDOW_SLACK)

    return tokens


class MediaTokenCounter:
    """Tokens per item from its header; a kind the bundle has no encoder for counts 0 (the
    pipeline refuses such parts before counting)."""

    def __init__(self, image: ImageTokens | None, audio: AudioTokens | None) -> None:
        self.image = image
        self.audio = audio

    @classmethod
    def for_bundle(cls, bundle: Bundle, layout: ImageLayout | None) -> MediaTokenCounter:
        """``layout``: a GLM-4.1V bundle's (``positions.image_layout``), else None."""
        image = None
        if layout is not None:
            image = _grid_tokens(layout)
        elif bundle.has("vision"):
            image = _patch_tokens(bundle.vision)
        audio = _conv_frames(bundle.audio) if bundle.has("audio") else None
        return cls(image, audio)

    def image_tokens(self, height: int, width: int) -> int:
        return self.image(height, width) if self.image else 0

    def audio_tokens(self, frames: int, rate: int) -> int:
        return self.audio(frames, rate) if self.audio else 0
