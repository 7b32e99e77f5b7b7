"""Media parts -> checked bytes for the encoders.

Everything is checked before anything is decoded: the count per request, the encoded size
(from the base64 length, before decoding it), then the image's dimensions or the clip's
duration from the file header. The encoders decode the pixels and samples themselves (that
scales with their replicas); the gateway only turns a GIF into a PNG of its first frame, since
the vision service takes PNG, JPEG and WebP. Each item is hashed (sha256) for the embedding
cache. http(s) image URLs are fetched only from allowlisted hosts, so a request cannot make
the server reach anything else (no SSRF).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
from typing import Literal
from urllib.parse import urlsplit

import anyio
import httpx
import soundfile
from PIL import Image, UnidentifiedImageError

from gateway.config import GatewayConfig
from gateway.media_tokens import MediaTokenCounter
from gateway.protocol.messages import AudioURLPart, ImagePart, InputAudioPart, MediaPart
from services.common.errors import InvalidInput, TooLarge
from services.encoder.types import MediaItem

Kind = Literal["image", "audio"]
IMAGE_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
AUDIO_MIME = {"WAV": "audio/wav", "MP3": "audio/mpeg", "FLAC": "audio/flac"}


@dataclasses.dataclass(frozen=True)
class Header:
    """What a media file's header says, read before anything decodes it."""

    height: int = 0  # images
    width: int = 0
    frames: int = 0  # audio: samples per channel
    rate: int = 0
    channels: int = 0

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def seconds(self) -> float:
        return self.frames / self.rate if self.rate else 0.0

    @property
    def samples(self) -> int:
        """What decoding the clip would produce, every channel counted."""
        return self.frames * self.channels


@dataclasses.dataclass(frozen=True)
class Media:
    kind: Kind
    data: bytes
    mime_type: str
    sha256: str
    header: Header = Header()
    tokens: int = 0  # its prompt tokens, counted from the header (media_tokens.py)

    def to_item(self) -> MediaItem:
        return MediaItem(data=self.data, mime_type=self.mime_type)


def check_counts(parts: list[MediaPart], config: GatewayConfig) -> None:
    images = sum(isinstance(p, ImagePart) for p in parts)
    audios = len(parts) - images
    if images > config.max_images_per_request:
        raise TooLarge(f"{images} images in one request; at most {config.max_images_per_request}")
    if audios > config.max_audios_per_request:
        raise TooLarge(
            f"{audios} audio clips in one request; at most {config.max_audios_per_request}"
        )


def decode_data_url(url: str, max_bytes: int, what: str) -> bytes:
    """The bytes of a base64 `data:` URL, refusing oversized ones before decoding them."""
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:") or not header.endswith(";base64"):
        raise InvalidInput(f"{what} must be a base64 data: URL (data:<type>;base64,...)")
    return decode_base64(payload, max_bytes, what)


def decode_base64(payload: str, max_bytes: int, what: str) -> bytes:
    if len(payload) // 4 * 3 > max_bytes + 3:
        raise TooLarge(f"{what} is larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{what} is not valid base64") from None
    if len(data) > max_bytes:
        raise TooLarge(f"{what} is larger than {max_bytes} bytes")
    if not data:
        raise InvalidInput(f"{what} is empty")
    return data


def check_image(data: bytes, max_pixels: int) -> tuple[bytes, str, Header]:
    """(bytes the vision service accepts, mime type, header); dimensions come from the
    header."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise TooLarge(f"image of {width}x{height} pixels exceeds {max_pixels} pixels")
            if image.format == "GIF":
                image.seek(0)
                frame = io.BytesIO()
                image.convert("RGB").save(frame, format="PNG")
                return frame.getvalue(), IMAGE_MIME["PNG"], Header(height=height, width=width)
            if image.format not in IMAGE_MIME:
                raise InvalidInput(
                    f"unsupported image format {image.format}; use PNG, JPEG, WebP or GIF"
                )
            return data, IMAGE_MIME[image.format], Header(height=height, width=width)
    except Image.DecompressionBombError:
        raise TooLarge(f"image exceeds {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, EOFError):
        raise InvalidInput("image could not be read (supported: PNG, JPEG, WebP, GIF)") from None


def check_audio(data: bytes, max_seconds: float) -> tuple[str, Header]:
    """The clip's mime type and header (duration, rate, channels), before any decoding."""
    try:
        info = soundfile.info(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        raise InvalidInput("audio could not be read (supported: WAV, MP3, FLAC)") from None
    if info.format not in AUDIO_MIME:
        raise InvalidInput(f"unsupported audio format {info.format}; use WAV, MP3 or FLAC")
    if info.frames <= 0 or info.samplerate <= 0:
        raise InvalidInput("audio clip is empty")
    if info.duration > max_seconds:
        raise TooLarge(f"audio clip of {info.duration:.1f} s exceeds {max_seconds:g} s")
    header = Header(frames=info.frames, rate=info.samplerate, channels=info.channels)
    return AUDIO_MIME[info.format], header


class MediaBudget:
    """One request's totals, checked as each item's header is read: image pixels, audio
    seconds, and the samples its clips would decode to (channels x rate x duration), so a
    192 kHz 8-channel clip is refused from its header rather than decoded."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.pixels = 0
        self.seconds = 0.0
        self.samples = 0

    def take(self, header: Header) -> None:
        config = self.config
        self.pixels += header.pixels
        self.seconds += header.seconds
        self.samples += header.samples
        if self.pixels > config.max_request_image_pixels:
            raise TooLarge(
                f"images of {self.pixels} pixels in one request; at most "
                f"{config.max_request_image_pixels}"
            )
        if self.seconds > config.max_request_audio_seconds:
            raise TooLarge(
                f"{self.seconds:.1f} s of audio in one request; at most "
                f"{config.max_request_audio_seconds:g} s"
            )
        if self.samples > config.max_request_audio_samples:
            raise TooLarge(
                f"audio decoding to {self.samples} samples (channels x rate x duration) in one "
                f"request; at most {config.max_request_audio_samples}"
            )


class MediaLoader:
    """Turns a request's media parts into checked ``Media``, in order."""

    def __init__(
        self, config: GatewayConfig, http: httpx.AsyncClient, counter: MediaTokenCounter
    ) -> None:
        self.config = config
        self.http = http
        self.counter = counter
        self.allowed_hosts = {host.lower() for host in config.image_url_allowlist}

    async def load(self, parts: list[MediaPart]) -> list[Media]:
        check_counts(parts, self.config)
        budget = MediaBudget(self.config)
        loaded = []
        for part in parts:
            media = await self.load_one(part)
            budget.take(media.header)
            loaded.append(media)
        return loaded

    def _media(self, kind: Kind, data: bytes, mime_type: str, header: Header) -> Media:
        if kind == "image":
            tokens = self.counter.image_tokens(header.height, header.width)
        else:
            tokens = self.counter.audio_tokens(header.frames, header.rate)
        return Media(kind, data, mime_type, hashlib.sha256(data).hexdigest(), header, tokens)

    async def load_one(self, part: MediaPart) -> Media:
        config = self.config
        if isinstance(part, ImagePart):
            url = part.image_url.url
            if url.startswith("data:"):
                data = decode_data_url(url, config.max_image_bytes, "image_url")
            else:
                data = await self.fetch_image(url)
            checked = await anyio.to_thread.run_sync(check_image, data, config.max_image_pixels)
            return self._media("image", *checked)
        if isinstance(part, InputAudioPart):
            data = decode_base64(part.input_audio.data, config.max_audio_bytes, "input_audio.data")
        elif isinstance(part, AudioURLPart):
            data = decode_data_url(part.audio_url.url, config.max_audio_bytes, "audio_url")
        mime, header = await anyio.to_thread.run_sync(check_audio, data, config.max_audio_seconds)
        return self._media("audio", data, mime, header)

    async def fetch_image(self, url: str) -> bytes:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise InvalidInput("image_url must be a data: URL or an http(s) URL")
        if (parts.hostname or "").lower() not in self.allowed_hosts:
            raise InvalidInput(
                f"image_url host {parts.hostname!r} is not allowed; send the image as a data: URL"
            )
        limit = self.config.max_image_bytes
        try:
            with anyio.fail_after(self.config.image_fetch_timeout_s):
                async with self.http.stream("GET", url, follow_redirects=False) as response:
                    if response.status_code != 200:
                        raise InvalidInput(f"image_url returned HTTP {response.status_code}")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > limit:
                            raise TooLarge(f"image_url is larger than {limit} bytes")
        except TimeoutError:
            raise InvalidInput("image_url took too long to fetch") from None
        except httpx.HTTPError:
            raise InvalidInput("image_url could not be fetched") from None
        return bytes(body)
