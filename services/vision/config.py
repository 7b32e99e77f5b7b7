"""The vision encoder's settings: `autoglm serve vision`'s flags (no torch imported here)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from services.common.config import limit, setting
from services.encoder.config import EncoderConfig

OUTPUT_DTYPES = ("float16", "float32")


@dataclasses.dataclass(frozen=True)
class VisionConfig(EncoderConfig):
    ENV_PREFIX: ClassVar[str] = "VISION"

    port: int = 50051
    max_image_bytes: int = limit(20 * 1024 * 1024, "largest encoded image file")
    max_image_pixels: int = limit(40_000_000, "largest width*height, read from the header")
    max_request_image_pixels: int = limit(
        64_000_000, "most pixels (width*height, from headers) of one request's images"
    )
    max_pixels: int = limit(
        0,
        "GLM-4.1V: the image processor's upper bound, size.longest_edge (as vLLM's "
        "mm_processor_kwargs; it counts a still image's 2 temporal frames); 0: the checkpoint's",
        zero_ok=True,
    )
    max_batch_patches: int = limit(
        16384, "GLM-4.1V: most patches per forward pass (a larger image runs alone)"
    )
    project_in_service: bool = setting(
        False,
        "GLM-4.1V: run the checkpoint's projector (downsample + merger) here and answer "
        "text-width tokens (a 1080x2400 screenshot: 27.5 MB instead of 41 MB for the 9B model); "
        "for a gateway without a GPU",
    )
    output_dtype: str = setting(
        "float16", "dtype of the returned embeddings: float16, or float32 for parity checks"
    )
    # EncoderConfig's batching, restated with this kind's defaults and nouns (a restated
    # field keeps its place among the flags).
    max_items: int = limit(64, "most images per request")
    batch_size: int = limit(16, "images per forward pass of the tower")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.output_dtype not in OUTPUT_DTYPES:
            raise ValueError(
                f"output_dtype must be one of {OUTPUT_DTYPES}, got {self.output_dtype!r}"
            )
