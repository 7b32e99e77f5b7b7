"""Image bytes -> the pixel tensor the vision tower expects.

The bytes are sniffed (PNG, JPEG, WebP only) and the dimensions read from the header before any
pixel is decoded (``Image.open`` is lazy), so a small file that expands to gigapixels is refused
cheaply. Resizing and normalization follow the tower's own preprocessor config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import AutoImageProcessor, BaseImageProcessor

from services.common.errors import InvalidInput, TooLarge
from services.encoder.pipeline import RequestBudget

# Pillow format name by leading bytes (WebP: RIFF, a 4-byte size, then WEBP).
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
ORIENTATION, QUARTER_TURNS = 0x0112, (5, 6, 7, 8)  # EXIF tag; values that swap width, height


def sniff_format(data: bytes) -> str:
    """The Pillow format of an encoded image; anything else is InvalidInput."""
    if data.startswith(_PNG):
        return "PNG"
    if data.startswith(_JPEG):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    raise InvalidInput("unsupported image format: expected PNG, JPEG or WebP bytes")


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


def open_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """The image with its header read and checked against the limits; no pixel decoded yet."""
    if len(data) > limits.max_bytes:
        raise TooLarge(f"image of {len(data)} bytes exceeds the {limits.max_bytes}-byte limit")
    fmt = sniff_format(data)
    with _reading(fmt):
        image = Image.open(io.BytesIO(data), formats=[fmt])
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidInput(f"{fmt} image has an empty size {width}x{height}")
    if width * height > limits.max_pixels:
        raise TooLarge(
            f"{fmt} image of {width}x{height} pixels exceeds the limit of "
            f"{limits.max_pixels} pixels"
        )
    return image


def image_pixels(data: bytes, limits: ImageLimits) -> int:
    """width x height, from the header alone."""
    width, height = open_image(data, limits).size
    return width * height


def upright_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the image turned upright per its EXIF orientation, as decode_image
    turns it, from the header alone. Pillow's PNG ``getexif()`` decodes every pixel to reach an
    eXIf chunk after the image data (0.1 s for a 1080x2400 screenshot), so a PNG's eXIf chunk
    is found from the chunk headers instead."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if image.format == "PNG" and "exif" not in image.info:
            exif = Image.Exif()
            chunk = png_chunk(data, b"eXIf")
            if chunk is not None:
                exif.load(chunk)
        else:
            exif = image.getexif()
    if exif.get(ORIENTATION, 1) in QUARTER_TURNS:
        return height, width
    return width, height


def png_chunk(data: bytes, kind: bytes) -> bytes | None:
    """The data of a PNG's first chunk of ``kind``, reached by skipping from chunk header to
    chunk header (length, type, data, CRC); None when there is none before IEND."""
    at = len(_PNG)
    while at + 8 <= len(data):
        length, found = struct.unpack_from(">I4s", data, at)
        if found == kind:
            return data[at + 8 : at + 8 + length]
        if found == b"IEND":
            break
        at += 12 + length
    return None


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Bytes -> an RGB image, upright per its EXIF orientation."""
    image = open_image(data, limits)
    with _reading(image.format or "image"):
        image.load()
        return ImageOps.exif_transpose(image).convert("RGB")


@contextlib.contextmanager
def _reading(fmt: str) -> Iterator[None]:
    """Pillow's failures as fixed messages (their text can name the in-memory file)."""
    try:
        yield
    except UnidentifiedImageError:
        raise InvalidInput(f"the bytes are not a readable {fmt} image") from None
    except Image.DecompressionBombError:  # Pillow's own, coarser limit
        raise TooLarge(f"{fmt} image is too large to decode") from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise InvalidInput(f"cannot decode the {fmt} image") from None


def pixel_budget(measure: Callable[[bytes], int], max_pixels: int) -> RequestBudget:
    """A request's images hold at most ``max_pixels``, counted from their headers."""
    return RequestBudget(measure, max_pixels, "pixels (width x height)")


class ImagePreprocessor:
    """Decodes one image and turns it into a [3, H, W] float32 tensor for the tower."""

    def __init__(self, processor: BaseImageProcessor, limits: ImageLimits) -> None:
        self.processor = processor
        self.limits = limits

    @classmethod
    def load(cls, folder: Path, limits: ImageLimits) -> ImagePreprocessor:
        """The preprocessor config saved with the tower (e.g. SiglipImageProcessor's)."""
        return cls(AutoImageProcessor.from_pretrained(folder), limits)

    def pixels(self, data: bytes) -> int:
        return image_pixels(data, self.limits)

    def __call__(self, data: bytes) -> torch.Tensor:
        image = decode_image(data, self.limits)
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"]
        return pixels[0]
