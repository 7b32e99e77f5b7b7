"""Image bytes -> GLM-4.1V patches, with transformers' own Glm4vImageProcessorPil.

The checkpoint's preprocessor_config.json drives it: ``smart_resize`` to multiples of
patch x merge (28) within the pixel bounds ``size.shortest_edge``/``size.longest_edge``, then
rescale, normalise and cut into [n_patches, C * temporal_patch * patch * patch] rows ordered in
2x2 merge groups (the order the projector's downsample expects). ``max_pixels`` replaces
``size.longest_edge``, as vLLM's ``mm_processor_kwargs`` do; like transformers, smart_resize
counts the two temporal frames of a still image in it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from transformers.models.glm4v.image_processing_pil_glm4v import (
    Glm4vImageProcessorPil,
    smart_resize,
)

from services.vision.preprocess import ImageLimits, decode_image, image_pixels


@dataclasses.dataclass(frozen=True)
class PatchedImage:
    pixels: torch.Tensor  # [n_patches, C * temporal_patch * patch * patch], float32
    grid_thw: tuple[int, int, int]  # patches along time, height, width

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w


class Glm4vImagePreprocessor:
    def __init__(self, processor: Glm4vImageProcessorPil, limits: ImageLimits) -> None:
        self.processor = processor
        self.limits = limits

    @classmethod
    def load(
        cls, checkpoint: Path, limits: ImageLimits, max_pixels: int = 0
    ) -> Glm4vImagePreprocessor:
        """The checkpoint's image processor; ``max_pixels`` > 0 overrides its upper bound."""
        processor = Glm4vImageProcessorPil.from_pretrained(checkpoint)
        if max_pixels:
            low = int(processor.size["shortest_edge"])
            if max_pixels < low:
                raise ValueError(
                    f"max_pixels {max_pixels} is below the processor's minimum {low} "
                    "(size.shortest_edge)"
                )
            processor = Glm4vImageProcessorPil.from_pretrained(
                checkpoint, size={"shortest_edge": low, "longest_edge": max_pixels}
            )
        return cls(processor, limits)

    def grid(self, height: int, width: int) -> tuple[int, int, int]:
        """The patch grid of a height x width image, without decoding it (what the gateway
        needs to count an image's tokens from its header)."""
        p = self.processor
        resized_h, resized_w = smart_resize(
            num_frames=p.temporal_patch_size,
            height=height,
            width=width,
            temporal_factor=p.temporal_patch_size,
            factor=p.patch_size * p.merge_size,
            min_pixels=p.size["shortest_edge"],
            max_pixels=p.size["longest_edge"],
        )
        return 1, resized_h // p.patch_size, resized_w // p.patch_size

    def pixels(self, data: bytes) -> int:
        return image_pixels(data, self.limits)

    def __call__(self, data: bytes) -> PatchedImage:
        image = decode_image(data, self.limits)
        out = self.processor(images=image, return_tensors="pt")
        t, h, w = (int(x) for x in out["image_grid_thw"][0])
        return PatchedImage(pixels=out["pixel_values"], grid_thw=(t, h, w))
