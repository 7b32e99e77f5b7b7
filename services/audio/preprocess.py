"""Audio bytes -> the 16 kHz mono input values the audio tower expects.

The bytes are sniffed (WAV, FLAC, MP3 only) and the rate, channels and duration read from the
header before any sample is decoded, so an hour of audio is refused before it is read (and a
request's clips are measured from their headers against its sample budget, pipeline.py).
Channels are averaged to mono and the rate converted with a polyphase filter (scipy's
resample_poly); normalization follows the tower's own feature-extractor config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly
from transformers import SequenceFeatureExtractor

from services.common.errors import InvalidInput, TooLarge

# Rates and channel counts outside these are not audio a speech tower can use (or not a real
# header); with the duration limit they bound the memory a hostile header can make us allocate.
MIN_RATE, MAX_RATE = 1_000, 192_000
MAX_CHANNELS = 64
BLOCK_FRAMES = 16_384
# Up/down factors of the polyphase filter stay below this, so an odd rate (44101 Hz) costs a
# rate error of a few parts per million instead of a filter with millions of taps.
MAX_RESAMPLE_FACTOR = 1000


def sniff_format(data: bytes) -> str:
    """The soundfile format of an encoded clip; anything else is InvalidInput."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "WAV"
    if data.startswith(b"fLaC"):
        return "FLAC"
    # An ID3 tag, or straight away an MPEG audio frame header (11 sync bits).
    if data.startswith(b"ID3") or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "MP3"
    raise InvalidInput("unsupported audio format: expected WAV, FLAC or MP3 bytes")


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling from ``rate`` to ``target`` Hz (anti-aliased, float32 out)."""
    if rate == target:
        return samples
    ratio = Fraction(target, rate).limit_denominator(MAX_RESAMPLE_FACTOR)
    out = resample_poly(samples, ratio.numerator, ratio.denominator)
    return np.asarray(out, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class AudioLimits:
    max_bytes: int
    max_seconds: float
    # The tower's receptive field: a shorter clip gives no frame at all.
    min_samples: int = 1


@dataclasses.dataclass(frozen=True)
class ClipHeader:
    format: str
    rate: int
    channels: int
    frames: int  # samples per channel

    @property
    def samples(self) -> int:
        """What decoding the clip produces, every channel counted."""
        return self.frames * self.channels


def read_header(data: bytes, limits: AudioLimits) -> ClipHeader:
    """The clip's format, rate, channels and length from its header, checked against the
    limits; no sample is decoded."""
    if len(data) > limits.max_bytes:
        raise TooLarge(f"audio of {len(data)} bytes exceeds the {limits.max_bytes}-byte limit")
    fmt = sniff_format(data)
    with _reading(fmt), sf.SoundFile(io.BytesIO(data)) as clip:
        header = ClipHeader(fmt, int(clip.samplerate), int(clip.channels), int(clip.frames))
    if not MIN_RATE <= header.rate <= MAX_RATE:
        raise InvalidInput(f"{fmt} sample rate {header.rate} Hz is outside {MIN_RATE}-{MAX_RATE}")
    if not 1 <= header.channels <= MAX_CHANNELS:
        raise InvalidInput(f"{fmt} clip has {header.channels} channels (1-{MAX_CHANNELS})")
    if header.frames > limits.max_seconds * header.rate:
        raise TooLarge(
            f"{fmt} clip of {header.frames / header.rate:.1f} s exceeds the limit of "
            f"{limits.max_seconds:g} s"
        )
    return header


@contextlib.contextmanager
def _reading(fmt: str) -> Iterator[None]:
    """libsndfile's failures as one fixed message (their text can name the in-memory file)."""
    try:
        yield
    except (sf.SoundFileError, RuntimeError, ValueError, EOFError):
        raise InvalidInput(f"cannot decode the {fmt} audio") from None


def decode_audio(data: bytes, limits: AudioLimits, rate_out: int) -> np.ndarray:
    """Bytes -> mono float32 samples at ``rate_out`` Hz."""
    header = read_header(data, limits)
    fmt = header.format
    # Downmix block by block: memory follows the samples actually decoded, and soundfile never
    # reads past the header's frame count.
    with _reading(fmt), sf.SoundFile(io.BytesIO(data)) as clip:
        blocks = [
            block.mean(axis=1)
            for block in clip.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True)
        ]
    if not blocks:
        raise InvalidInput(f"{fmt} clip has no samples")
    mono = np.concatenate(blocks)
    if not np.isfinite(mono).all():
        raise InvalidInput(f"{fmt} clip holds NaN or infinite samples")
    samples = resample(mono, header.rate, rate_out)
    if len(samples) < limits.min_samples:
        ms_per_sample = 1000 / rate_out
        raise InvalidInput(
            f"{fmt} clip of {len(samples) * ms_per_sample:.1f} ms is shorter than the "
            f"tower's minimum of {limits.min_samples * ms_per_sample:.1f} ms"
        )
    return samples


class AudioPreprocessor:
    """Decodes one clip and turns it into a 1-D float32 tensor of input values."""

    def __init__(self, extractor: SequenceFeatureExtractor, limits: AudioLimits) -> None:
        """``extractor``: the tower's own, e.g. AutoFeatureExtractor.from_pretrained(folder)."""
        self.extractor = extractor
        self.limits = limits
        self.sampling_rate = int(extractor.sampling_rate)

    def samples(self, data: bytes) -> int:
        """What the clip decodes to (channels x frames), from its header alone."""
        return read_header(data, self.limits).samples

    def __call__(self, data: bytes) -> torch.Tensor:
        samples = decode_audio(data, self.limits, self.sampling_rate)
        features = self.extractor(samples, sampling_rate=self.sampling_rate, return_tensors="np")  # type: ignore[operator]
        return torch.from_numpy(np.asarray(features["input_values"][0], dtype=np.float32))
