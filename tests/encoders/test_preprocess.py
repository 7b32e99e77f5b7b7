"""Decoding and resampling, without a tower: pure functions on bytes and samples."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from services.audio.preprocess import AudioLimits, ClipHeader, decode_audio, read_header, resample
from services.audio.preprocess import sniff_format as sniff_audio
from services.common.errors import InvalidInput, TooLarge
from services.vision.preprocess import (
    ImageLimits,
    decode_image,
    image_pixels,
    png_chunk,
    upright_size,
)
from services.vision.preprocess import sniff_format as sniff_image
from testkit.media import audio_bytes, image_bytes, silent_flac
from tests.encoders.helpers import encoded_audio

LIMITS = AudioLimits(max_bytes=2**24, max_seconds=60.0)


def tone(hz: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_pitch_and_duration(rate: int) -> None:
    out = resample(tone(1000, rate), rate, 16000)
    assert out.dtype == np.float32
    assert len(out) == 16000
    assert peak_hz(out, 16000) == pytest.approx(1000, abs=2)
    # Amplitude survives: an RMS of 1/sqrt(2) for a unit sine (away from the edges).
    assert np.sqrt(np.mean(out[1000:-1000] ** 2)) == pytest.approx(0.5**0.5, rel=0.01)


def test_resampling_filters_out_what_16k_cannot_hold() -> None:
    # A 10 kHz tone is above the 8 kHz Nyquist limit of 16 kHz audio: a proper low-pass
    # removes it; naive interpolation would fold it back as a 6 kHz alias.
    out = resample(tone(10_000, 44100), 44100, 16000)
    assert np.sqrt(np.mean(out[1000:-1000] ** 2)) < 0.01


def test_odd_rates_resample_quickly() -> None:
    start = time.perf_counter()
    out = resample(tone(440, 44101, seconds=5.0), 44101, 16000)
    assert time.perf_counter() - start < 2.0
    assert abs(len(out) - 5 * 16000) <= 1
    assert peak_hz(out, 16000) == pytest.approx(440, abs=1)


def test_formats_are_sniffed_from_the_bytes() -> None:
    assert sniff_image(image_bytes("PNG")) == "PNG"
    assert sniff_image(image_bytes("JPEG")) == "JPEG"
    assert sniff_image(image_bytes("WEBP")) == "WEBP"
    assert sniff_audio(audio_bytes(0.1, format="WAV")) == "WAV"
    assert sniff_audio(audio_bytes(0.1, format="FLAC")) == "FLAC"
    assert (
        sniff_audio(encoded_audio(tone(440, 24000, 0.2), 24000, "MP3", "MPEG_LAYER_III")) == "MP3"
    )
    for data in (b"", b"BM" + bytes(60), b"RIFF\0\0\0\0AVI LIST"):
        with pytest.raises(InvalidInput):
            sniff_image(data)
        with pytest.raises(InvalidInput):
            sniff_audio(data)


def test_images_are_decoded_upright_and_in_rgb() -> None:
    # A 40x20 grey-alpha picture stored sideways, with EXIF orientation 6 (rotate 90 on show).
    image = Image.new("LA", (40, 20), (128, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", exif=exif)
    decoded = decode_image(out.getvalue(), ImageLimits(max_bytes=2**20, max_pixels=2**20))
    assert decoded.mode == "RGB"
    assert decoded.size == (20, 40)


def sideways_png(exif_after_pixels: bool) -> bytes:
    """A 40x20 PNG with EXIF orientation 6 (rotate 90 on show), its eXIf chunk before the
    image data as Pillow writes it, or moved after it (the PNG spec allows both)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.new("RGB", (40, 20), "red").save(out, "PNG", exif=exif)
    data = out.getvalue()
    if not exif_after_pixels:
        return data
    chunk = png_chunk(data, b"eXIf")
    assert chunk is not None
    whole = struct.pack(">I", len(chunk)) + b"eXIf" + chunk
    whole += struct.pack(">I", zlib.crc32(b"eXIf" + chunk))
    without = data.replace(whole, b"")
    return without[:-12] + whole + without[-12:]  # before IEND (12 bytes, no data)


@pytest.mark.parametrize("exif_after_pixels", [False, True])
def test_the_upright_size_of_a_png_comes_from_its_chunks(exif_after_pixels: bool) -> None:
    data = sideways_png(exif_after_pixels)
    limits = ImageLimits(max_bytes=2**20, max_pixels=2**20)
    assert upright_size(data) == decode_image(data, limits).size == (20, 40)
    plain = io.BytesIO()
    Image.new("RGB", (40, 20)).save(plain, "PNG")
    assert upright_size(plain.getvalue()) == (40, 20)


def test_the_upright_size_decodes_no_pixel() -> None:
    """Pixel data that cannot be decoded does not matter: only the chunk headers are read."""
    data = sideways_png(exif_after_pixels=True)
    pixels = png_chunk(data, b"IDAT")
    assert pixels is not None
    broken = data.replace(pixels, bytes(len(pixels)))
    with pytest.raises(InvalidInput):
        decode_image(broken, ImageLimits(max_bytes=2**20, max_pixels=2**20))
    assert upright_size(broken) == (20, 40)


def test_clips_are_downmixed_to_mono() -> None:
    voice, other = 0.5 * tone(300, 16000), 0.3 * tone(2000, 16000)
    stereo = np.stack([voice + other, voice - other], axis=1)
    decoded = decode_audio(encoded_audio(stereo, 16000, subtype="FLOAT"), LIMITS, 16000)
    np.testing.assert_allclose(decoded, voice, atol=1e-6)


def test_clip_limits_come_from_the_header() -> None:
    limits = AudioLimits(max_bytes=2**20, max_seconds=2.0, min_samples=400)
    with pytest.raises(TooLarge, match=r"2\.5 s exceeds the limit of 2 s"):
        decode_audio(audio_bytes(2.5, 8000, "FLAC"), limits, 16000)
    with pytest.raises(TooLarge, match="bytes exceeds"):
        decode_audio(audio_bytes(1.0), AudioLimits(max_bytes=1000, max_seconds=2.0), 16000)
    with pytest.raises(InvalidInput, match=r"shorter than the tower's minimum of 25\.0 ms"):
        decode_audio(audio_bytes(0.02), limits, 16000)


def test_a_clip_is_measured_from_its_header_alone() -> None:
    # 45 s of 192 kHz 8-channel silence: 69 M samples from a few kB, none decoded
    clip = silent_flac(45, rate=192_000, channels=8)
    started = time.monotonic()
    header = read_header(clip, LIMITS)
    assert time.monotonic() - started < 0.1
    assert header == ClipHeader("FLAC", 192_000, 8, 45 * 192_000)
    assert header.samples == 69_120_000
    assert image_pixels(image_bytes("PNG", size=(120, 90)), ImageLimits(2**20, 2**20)) == 10_800


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (audio_bytes(1.0)[:30], "cannot decode the WAV audio"),
        (b"fLaC" + bytes(60), "cannot decode the FLAC audio"),
        (audio_bytes(1.0, format="FLAC")[:200], "cannot decode the FLAC audio"),
    ],
    ids=["truncated-wav-header", "flac-marker-only", "truncated-flac"],
)
def test_undecodable_audio_gets_a_fixed_message(data: bytes, message: str) -> None:
    """libsndfile's own text (which can name the in-memory file object) is never shown."""
    with pytest.raises(InvalidInput) as raised:
        decode_audio(data, LIMITS, 16000)
    assert str(raised.value) == message


def test_undecodable_images_get_a_fixed_message() -> None:
    with pytest.raises(InvalidInput) as raised:
        decode_image(image_bytes("JPEG")[:200], ImageLimits(2**20, 2**20))
    assert str(raised.value) == "cannot decode the JPEG image"
