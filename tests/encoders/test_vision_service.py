"""The vision encoder as a client sees it: `autoglm serve vision` on a loopback port, called
with a real gRPC client."""

from __future__ import annotations

import asyncio
import struct
import zlib

import grpc
import pytest
import torch

from autoglm.v1 import vision_pb2_grpc
from services.encoder.types import MediaItem, encode_request_to_pb
from testkit.media import image_bytes
from tests.encoders.helpers import EncoderServiceContract, assert_item_refused, encode

pytestmark = pytest.mark.stack  # every test here talks to service processes

MAX_ITEMS = 400
# The default bundle's tower: 64x64 images in 8x8 patches, width 128.
PATCHES, HIDDEN = 64, 128
FOUR_MIB = 4 * 1024 * 1024
KIND, STUB = "vision", vision_pb2_grpc.VisionEncoderStub
# A big batch makes the warm-up (and so the NOT_SERVING phase) long enough to watch.
ARGS = ["--device", "cpu", "--max-items", str(MAX_ITEMS), "--batch-size", "256"]


class TestEncoderContract(EncoderServiceContract):
    TOWER, HIDDEN, MAX_ITEMS = "SiglipVisionModel", HIDDEN, MAX_ITEMS


async def test_png_jpeg_and_webp_become_fp16_patch_embeddings(
    stub: vision_pb2_grpc.VisionEncoderStub,
) -> None:
    images = [
        image_bytes(fmt, size=(120, 90), seed=i) for i, fmt in enumerate(["PNG", "JPEG", "WEBP"])
    ]
    embeddings = await encode(stub, images)
    assert [e.shape for e in embeddings] == [(PATCHES, HIDDEN)] * 3
    assert all(e.dtype == torch.float16 and torch.isfinite(e).all() for e in embeddings)
    # Different pictures, different embeddings.
    assert not torch.equal(embeddings[0], embeddings[1])


async def test_a_batch_gives_what_each_image_gives_alone(
    stub: vision_pb2_grpc.VisionEncoderStub,
) -> None:
    images = [image_bytes("PNG", size=(64 + 16 * i, 64), seed=10 + i) for i in range(5)]
    together = await encode(stub, images)
    alone = [(await encode(stub, [image]))[0] for image in images]
    for batched, single in zip(together, alone, strict=True):
        torch.testing.assert_close(batched, single, atol=2e-2, rtol=1e-2)


async def test_concurrent_calls_give_what_each_gives_alone(
    stub: vision_pb2_grpc.VisionEncoderStub,
) -> None:
    images = [image_bytes("PNG", size=(64, 48 + 8 * i), seed=40 + i) for i in range(6)]
    together = await asyncio.gather(*(encode(stub, [image]) for image in images))  # batched
    alone = [await encode(stub, [image]) for image in images]
    for shared, single in zip(together, alone, strict=True):
        torch.testing.assert_close(shared[0], single[0], atol=2e-2, rtol=1e-2)


def png_header(width: int, height: int) -> bytes:
    """A PNG that states its size and holds no pixels: IHDR, then an empty IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"")


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (b"definitely not an image", grpc.StatusCode.INVALID_ARGUMENT, "unsupported image format"),
        (b"GIF89a" + bytes(64), grpc.StatusCode.INVALID_ARGUMENT, "expected PNG, JPEG or WebP"),
        (image_bytes("PNG")[:60], grpc.StatusCode.INVALID_ARGUMENT, "PNG"),
        (image_bytes("JPEG")[:200], grpc.StatusCode.INVALID_ARGUMENT, "JPEG"),
        (b"\x89PNG\r\n\x1a\n" + bytes(40), grpc.StatusCode.INVALID_ARGUMENT, "PNG"),
        # Sizes from the header alone, refused before decoding: there are no pixels to decode,
        # which would be INVALID_ARGUMENT. Above our limit (40M), and above Pillow's own.
        (png_header(8000, 6000), grpc.StatusCode.OUT_OF_RANGE, "8000x6000 pixels exceeds"),
        (png_header(100_000, 100_000), grpc.StatusCode.OUT_OF_RANGE, "too large"),
    ],
    ids=[
        "garbage",
        "gif",
        "truncated-png",
        "truncated-jpeg",
        "png-signature-only",
        "over-our-pixel-limit",
        "over-pillows-pixel-limit",
    ],
)
async def test_bad_images_are_refused_with_a_clear_status(
    stub: vision_pb2_grpc.VisionEncoderStub, data: bytes, code: grpc.StatusCode, message: str
) -> None:
    await assert_item_refused(stub, image_bytes("PNG"), data, code, message)


async def test_request_size_limits(stub: vision_pb2_grpc.VisionEncoderStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await encode(stub, [])
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await encode(stub, [image_bytes("PNG")] * (MAX_ITEMS + 1))
    assert too_many.value.code() == grpc.StatusCode.OUT_OF_RANGE
    # The service is still fine afterwards.
    assert len(await encode(stub, [image_bytes("PNG")])) == 1


async def test_a_request_is_held_to_its_pixel_budget_from_the_headers(
    stub: vision_pb2_grpc.VisionEncoderStub,
) -> None:
    # two headers of 35 M pixels, each within the 40 M image limit, no pixel data at all
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await encode(stub, [png_header(7000, 5000)] * 2)
    assert raised.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert raised.value.details() == (
        "the request's items hold 70000000 pixels (width x height); at most 64000000 per request"
    )


async def test_responses_over_4_mib_go_through(stub: vision_pb2_grpc.VisionEncoderStub) -> None:
    count = 300  # 300 x 64 patches x 128 x 2 bytes: about 4.9 MB of embeddings
    request = encode_request_to_pb([MediaItem(image_bytes("PNG", seed=i)) for i in range(count)])
    reply = await stub.Encode(request)
    assert reply.ByteSize() > FOUR_MIB
    assert [tuple(t.shape) for t in reply.embeddings] == [(PATCHES, HIDDEN)] * count
