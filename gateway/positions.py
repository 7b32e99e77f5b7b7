"""Every prompt token's (t, h, w) rotary position for GLM-4.1V's 3-D mRoPE.

A port of transformers' ``Glm4vModel.get_rope_index`` for images: a run of text tokens advances
all three axes together, one per token; an image's tokens (its grid after the 2x2 merge, row by
row) take t = start + frame, h = start + row, w = start + column, and the next token starts at
start + max(rows, columns). Generated tokens continue from the largest position + 1, which the
decoder takes from the prompt's positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bundle.layout import GLM4V, Bundle
from gateway.chat import Placeholder, Prompt
from gateway.config import GatewayConfig
from gateway.media import Media
from services.decoder.positions import PositionIds
from services.vision.glm4v_preprocess import Glm4vImagePreprocessor
from services.vision.preprocess import ImageLimits, upright_size

Grid = tuple[int, int, int]  # (t, h, w) in patches, as the image processor reports image_grid_thw


def mrope_positions(
    length: int, images: Sequence[tuple[Placeholder, Grid]], merge_size: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Rows t, h, w for a prompt of ``length`` tokens whose images sit at the placeholders."""
    rows: tuple[list[int], list[int], list[int]] = ([], [], [])
    position = 0
    cursor = 0

    def text_until(end: int) -> None:
        nonlocal position, cursor
        for row in rows:
            row.extend(range(position, position + end - cursor))
        position += end - cursor
        cursor = end

    for placeholder, (t, h, w) in sorted(images, key=lambda item: item[0].offset):
        text_until(placeholder.offset)
        grid_h, grid_w = h // merge_size, w // merge_size
        if placeholder.length != t * grid_h * grid_w:
            raise ValueError(
                f"an image of grid {(t, h, w)} has {t * grid_h * grid_w} tokens after the "
                f"{merge_size}x{merge_size} merge, its placeholder {placeholder.length}"
            )
        for frame in range(t):
            for row in range(grid_h):
                rows[0].extend([position + frame] * grid_w)
                rows[1].extend([position + row] * grid_w)
                rows[2].extend(range(position, position + grid_w))
        position += max(grid_h, grid_w)
        cursor = placeholder.offset + placeholder.length
    text_until(length)
    return tuple(rows[0]), tuple(rows[1]), tuple(rows[2])


class ImageLayout:
    """A GLM-4.1V bundle's images in the prompt: each image's patch grid from its header (the
    dimensions, as the image processor will resize it), hence its token count, before anything
    is encoded; then every prompt token's 3-D position."""

    def __init__(self, grid_of: Callable[[int, int], Grid], merge_size: int) -> None:
        self.grid_of = grid_of  # (height, width) -> (t, h, w) patches
        self.merge_size = merge_size

    @classmethod
    def from_checkpoint(cls, folder: Path, max_pixels: int, limits: ImageLimits) -> ImageLayout:
        """The checkpoint's image processor; max_pixels > 0 replaces its upper bound, as the
        vision service's does."""
        preprocess = Glm4vImagePreprocessor.load(folder, limits, max_pixels)
        return cls(preprocess.grid, int(preprocess.processor.merge_size))

    def grid(self, image: bytes) -> Grid:
        """From the header only, upright: an EXIF rotation by 90 degrees swaps the sides, as
        the vision service turns the image upright before resizing it."""
        width, height = upright_size(image)
        return self.grid_of(height, width)

    def tokens(self, grid: Grid) -> int:
        """An image's token count: its patches after the merge."""
        t, h, w = grid
        return t * (h // self.merge_size) * (w // self.merge_size)

    def grids(self, media: Sequence[Media]) -> list[Grid]:
        """Every image's grid, in request order."""
        return [self.grid(m.data) for m in media if m.kind == "image"]

    def check(self, grids: Sequence[Grid], encoded: Sequence[Grid | None]) -> None:
        """The vision service must have resized each image as its header promised."""
        for index, (expected, got) in enumerate(zip(grids, encoded, strict=True)):
            if got is not None and tuple(got) != expected:
                raise RuntimeError(
                    f"the vision service encoded image {index} at grid {tuple(got)}, the gateway "
                    f"expected {expected} from its header: give both the same "
                    "AUTOGLM_VISION_MAX_PIXELS"
                )

    def positions(self, prompt: Prompt, grids: Sequence[Grid]) -> PositionIds:
        """Every prompt token's (t, h, w) position; the images' grids in request order."""
        images = [p for p in prompt.placeholders if p.kind == "image"]
        rows = mrope_positions(
            len(prompt.input_ids), list(zip(images, grids, strict=True)), self.merge_size
        )
        return PositionIds(rows)


def image_layout(bundle: Bundle, config: GatewayConfig) -> ImageLayout | None:
    """GLM-4.1V: grids from image headers and 3-D positions; other bundles use 1-D positions."""
    if bundle.architecture != GLM4V:
        return None
    limits = ImageLimits(max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels)
    return ImageLayout.from_checkpoint(bundle.vision, config.vision_max_pixels, limits)
