"""A GLM-4.1V image's grid and token count from its header alone, as the image processor will
resize it (before anything is encoded), and the prompt's 3-D positions from those grids."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoImageProcessor

from gateway.positions import ImageLayout
from services.vision.preprocess import ImageLimits
from testkit.media import image_bytes

LIMITS = ImageLimits(max_bytes=2**30, max_pixels=2**30)


def processor_grid(checkpoint: Path, data: bytes, **size: int) -> tuple[int, int, int]:
    processor = AutoImageProcessor.from_pretrained(checkpoint, **size)
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return tuple(int(x) for x in processor(images=[image])["image_grid_thw"][0])  # type: ignore[return-value]


@pytest.mark.parametrize("size", [(96, 80), (224, 308), (1000, 30), (2000, 1500)])
def test_header_grid_equals_the_image_processors(glm4v_checkpoint: Path, size: tuple) -> None:
    layout = ImageLayout.from_checkpoint(glm4v_checkpoint, 0, LIMITS)
    data = image_bytes(size=size)
    assert layout.grid(data) == processor_grid(glm4v_checkpoint, data)


def test_a_phone_screenshot_at_the_real_bounds_is_3354_tokens(glm4v_checkpoint: Path) -> None:
    layout = ImageLayout.from_checkpoint(glm4v_checkpoint, 47040000, LIMITS)
    grid = layout.grid(image_bytes(size=(1080, 2400)))
    assert grid == (1, 172, 78) and grid[1] * grid[2] // 4 == 3354


def test_max_pixels_bounds_the_grid(glm4v_checkpoint: Path) -> None:
    small = ImageLayout.from_checkpoint(glm4v_checkpoint, 28 * 28 * 2 * 16, LIMITS)
    t, h, w = small.grid(image_bytes(size=(1080, 2400)))
    assert t * h * w // 4 <= 16


def test_an_exif_rotated_photo_counts_as_the_upright_image(glm4v_checkpoint: Path) -> None:
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    Image.new("RGB", (300, 120), "red").save(out, format="JPEG", exif=exif)
    layout = ImageLayout.from_checkpoint(glm4v_checkpoint, 0, LIMITS)
    upright = io.BytesIO()
    Image.new("RGB", (120, 300), "red").save(upright, format="JPEG")
    assert layout.grid(out.getvalue()) == layout.grid(upright.getvalue())
    assert layout.grid(out.getvalue())[1] > layout.grid(out.getvalue())[2]


def test_a_vision_service_that_resized_otherwise_is_named(glm4v_checkpoint: Path) -> None:
    layout = ImageLayout.from_checkpoint(glm4v_checkpoint, 0, LIMITS)
    layout.check([(1, 8, 8)], [(1, 8, 8)])
    with pytest.raises(RuntimeError, match="AUTOGLM_VISION_MAX_PIXELS"):
        layout.check([(1, 8, 8)], [(1, 16, 8)])
