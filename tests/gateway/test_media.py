"""Media checks: sizes, counts, dimensions and durations before decoding; the URL allowlist."""

from __future__ import annotations

import base64
import dataclasses
import http.server
import io
import struct
import threading
import zlib
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from gateway.config import GatewayConfig
from gateway.media import MediaLoader, check_audio, check_image, decode_data_url
from gateway.media_tokens import MediaTokenCounter
from gateway.protocol.messages import AudioURLPart, ImagePart, InputAudioPart
from services.common.errors import InvalidInput, TooLarge
from testkit.media import audio_bytes, b64, data_url, image_bytes, silent_flac


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size but holds no pixel data: only the header can be
    read, so a check that passes it must have decoded nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def image_part(url: str) -> ImagePart:
    return ImagePart.model_validate({"type": "image_url", "image_url": {"url": url}})


def test_image_dimensions_are_checked_from_the_header() -> None:
    with pytest.raises(TooLarge, match="10000x5000"):
        check_image(png_header_claiming(10_000, 5_000), max_pixels=40_000_000)
    with pytest.raises(TooLarge):  # so large that Pillow refuses it as a decompression bomb
        check_image(png_header_claiming(100_000, 100_000), max_pixels=40_000_000)


def test_supported_images_pass_through_unchanged() -> None:
    for fmt, mime in (("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")):
        data = image_bytes(fmt)
        assert check_image(data, 10**6)[:2] == (data, mime)


def test_gif_becomes_its_first_frame_as_png() -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in ("red", "blue")]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    converted, mime, header = check_image(out.getvalue(), 10**6)
    assert (header.height, header.width) == (8, 8)
    assert mime == "image/png"
    assert Image.open(io.BytesIO(converted)).convert("RGB").getpixel((4, 4)) == (255, 0, 0)


@pytest.mark.parametrize("data", [b"not an image", image_bytes("BMP")])
def test_unreadable_or_unsupported_images_are_bad_input(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        check_image(data, 10**6)


def test_data_urls_are_size_checked_before_decoding() -> None:
    url = data_url(b"x" * 4000, "image/png")
    assert decode_data_url(url, 4000, "image_url") == b"x" * 4000
    with pytest.raises(TooLarge):
        decode_data_url(url, 1000, "image_url")
    for bad in ("data:image/png,raw", "http//x", "data:image/png;base64,@@@@"):
        with pytest.raises(InvalidInput):
            decode_data_url(bad, 1000, "image_url")


@pytest.mark.parametrize(("fmt", "mime"), [("WAV", "audio/wav"), ("FLAC", "audio/flac")])
def test_audio_formats_and_duration_from_the_header(fmt: str, mime: str) -> None:
    clip = audio_bytes(seconds=2.0, format=fmt, subtype="PCM_16")
    found, header = check_audio(clip, max_seconds=3)
    assert found == mime and header.seconds == pytest.approx(2.0)
    with pytest.raises(TooLarge, match=r"2\.0 s"):
        check_audio(clip, max_seconds=1)


def test_mp3_is_accepted() -> None:
    clip = audio_bytes(seconds=1.0, format="MP3", subtype="MPEG_LAYER_III")
    assert check_audio(clip, max_seconds=3)[0] == "audio/mpeg"


def test_unreadable_audio_is_bad_input() -> None:
    with pytest.raises(InvalidInput):
        check_audio(b"RIFF....nonsense", max_seconds=10)


@pytest.fixture
def image_server() -> Iterator[str]:
    """A real HTTP server on loopback serving one small PNG at / and a big body at /big."""
    png = image_bytes("PNG")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = png if self.path == "/" else b"\0" * (2 * 1024 * 1024)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def loader(**fields: object) -> MediaLoader:
    config = dataclasses.replace(GatewayConfig(), **fields)  # type: ignore[arg-type]
    return MediaLoader(config, httpx.AsyncClient(), MediaTokenCounter(None, None))


async def test_http_image_urls_need_an_allowlisted_host(image_server: str) -> None:
    with pytest.raises(InvalidInput, match="not allowed"):
        await loader().load([image_part(image_server + "/")])
    media = await loader(image_url_allowlist=("127.0.0.1",)).load([image_part(image_server + "/")])
    assert media[0].mime_type == "image/png" and len(media[0].sha256) == 64
    with pytest.raises(TooLarge):
        small = loader(image_url_allowlist=("127.0.0.1",), max_image_mb=1)
        await small.load([image_part(image_server + "/big")])
    with pytest.raises(InvalidInput):
        await loader(image_url_allowlist=("127.0.0.1",)).load([image_part("file:///etc/passwd")])


async def test_counts_are_checked_before_any_part_is_decoded() -> None:
    parts = [image_part("data:image/png;base64,not-even-base64")] * 3
    with pytest.raises(TooLarge, match="3 images"):
        await loader(max_images_per_request=2).load(parts)
    clip = InputAudioPart.model_validate(
        {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}
    )
    with pytest.raises(TooLarge, match="2 audio clips"):
        await loader(max_audios_per_request=1).load([clip, clip])


async def test_the_same_bytes_hash_the_same_whatever_part_carries_them() -> None:
    clip = audio_bytes(seconds=0.5)
    as_input = InputAudioPart.model_validate(
        {"type": "input_audio", "input_audio": {"data": b64(clip), "format": "wav"}}
    )
    as_url = AudioURLPart.model_validate(
        {"type": "audio_url", "audio_url": {"url": data_url(clip, "audio/wav")}}
    )
    first, second = await loader().load([as_input, as_url])
    assert first.sha256 == second.sha256 and first.kind == second.kind == "audio"


def audio_part(data: bytes) -> InputAudioPart:
    encoded = base64.b64encode(data).decode()
    return InputAudioPart.model_validate(
        {"type": "input_audio", "input_audio": {"data": encoded, "format": "flac"}}
    )


async def test_a_192khz_8_channel_flac_is_refused_from_its_header() -> None:
    """45 s of it is 69 kB of FLAC but 69 M samples (276 MB as float32): over the default
    decoded-sample budget, refused from channels x rate x duration before anything decodes."""
    clip = silent_flac(45, rate=192_000, channels=8)
    assert len(clip) < 200_000 and GatewayConfig().max_request_audio_samples < 69_120_000
    with pytest.raises(TooLarge, match="channels x rate x duration"):
        await loader().load([audio_part(clip)])
    mono = silent_flac(45, rate=16_000, channels=1)  # the same duration at speech rates fits
    assert (await loader().load([audio_part(mono)]))[0].header.samples == 45 * 16_000


async def test_request_totals_of_pixels_and_seconds() -> None:
    images = [image_part(data_url(png_header_claiming(4000, 3000), "image/png"))] * 2
    with pytest.raises(TooLarge, match="24000000 pixels"):
        await loader(max_request_image_pixels=20_000_000).load(list(images))
    assert len(await loader(max_request_image_pixels=24_000_000).load(list(images))) == 2
    clip = audio_part(audio_bytes(seconds=2.0, format="FLAC"))
    with pytest.raises(TooLarge, match=r"4\.0 s of audio"):
        await loader(max_request_audio_seconds=3.0).load([clip, clip])
