"""The audio encoder as a client sees it: `autoglm serve audio` on a loopback port, called with
a real gRPC client."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from autoglm.v1 import audio_pb2_grpc
from services.encoder.types import MediaItem, encode_request_to_pb
from testkit.media import audio_bytes, silent_flac
from tests.encoders.helpers import (
    EncoderServiceContract,
    assert_item_refused,
    encode,
    encoded_audio,
    speech_like,
)

pytestmark = pytest.mark.stack  # every test here talks to service processes

HIDDEN = 128  # the default bundle's tower width
MAX_SECONDS = 50
FOUR_MIB = 4 * 1024 * 1024


def frames(seconds: float) -> int:
    """Wav2Vec2's front-end: 400-sample receptive field, 320-sample hop, at 16 kHz."""
    return (int(seconds * 16000) - 400) // 320 + 1


KIND, STUB = "audio", audio_pb2_grpc.AudioEncoderStub
# Short windows, many per batch: the >4 MiB request stays quick on a CPU, and the warm-up batch
# (so the NOT_SERVING phase) is long enough to watch.
ARGS = ["--device", "cpu", "--max-audio-seconds", str(MAX_SECONDS)]
ARGS += ["--window-seconds", "10", "--batch-size", "16"]


class TestEncoderContract(EncoderServiceContract):
    TOWER, HIDDEN, MAX_ITEMS = "Wav2Vec2Model", HIDDEN, 16


async def test_wav_flac_and_mp3_become_fp16_frame_embeddings(
    stub: audio_pb2_grpc.AudioEncoderStub,
) -> None:
    clips = [
        audio_bytes(1.0, 16000, "WAV", "PCM_16"),
        audio_bytes(1.0, 44100, "WAV", "FLOAT"),
        audio_bytes(1.0, 22050, "FLAC", "PCM_16"),
    ]
    embeddings = await encode(stub, clips)
    assert [e.shape for e in embeddings] == [(frames(1.0), HIDDEN)] * 3
    assert all(e.dtype == torch.float16 and torch.isfinite(e).all() for e in embeddings)
    # MP3 frames carry encoder delay and padding: the length is only close to 1 s.
    (mp3,) = await encode(stub, [audio_bytes(1.0, 24000, "MP3", "MPEG_LAYER_III")])
    assert mp3.dtype == torch.float16
    assert abs(mp3.shape[0] - frames(1.0)) <= 4 and mp3.shape[1] == HIDDEN


async def test_stereo_44k_is_downmixed_and_resampled_to_16k_mono(
    stub: audio_pb2_grpc.AudioEncoderStub,
) -> None:
    # The same sound at both rates (no noise: that would differ sample by sample).
    reference = speech_like(2.0, 16000, noise=0.0)
    high = speech_like(2.0, 44100, noise=0.0)
    other = 0.4 * np.random.default_rng(1).standard_normal(high.shape).astype(np.float32)
    stereo = np.stack([high + other, high - other], axis=1)  # only the average is `high`
    clips = [encoded_audio(x, r, subtype="FLOAT") for x, r in ((reference, 16000), (stereo, 44100))]
    reference_out, stereo_out = await encode(stub, clips)
    assert reference_out.shape == stereo_out.shape == (frames(2.0), HIDDEN)
    cosine = torch.cosine_similarity(reference_out.float(), stereo_out.float(), dim=-1)
    assert cosine.mean() > 0.999


async def test_the_output_features_are_rms_normalised(
    stub: audio_pb2_grpc.AudioEncoderStub,
) -> None:
    # The default bundle's RMSNorm weight is neutral (ones): every frame has unit RMS.
    (out,) = await encode(stub, [encoded_audio(speech_like(1.5, 16000), 16000)])
    rms = out.float().pow(2).mean(dim=-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-2, rtol=0)


async def test_a_batch_gives_what_each_clip_gives_alone(
    stub: audio_pb2_grpc.AudioEncoderStub,
) -> None:
    clips = [encoded_audio(speech_like(0.5 + 0.7 * i, 16000, seed=i), 16000) for i in range(4)]
    together = await encode(stub, clips)
    alone = [(await encode(stub, [clip]))[0] for clip in clips]
    assert [t.shape[0] for t in together] == [frames(0.5 + 0.7 * i) for i in range(4)]
    for batched, single in zip(together, alone, strict=True):
        torch.testing.assert_close(batched, single, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (b"definitely not audio", grpc.StatusCode.INVALID_ARGUMENT, "unsupported audio format"),
        (b"OggS" + bytes(64), grpc.StatusCode.INVALID_ARGUMENT, "expected WAV, FLAC or MP3"),
        (audio_bytes(1.0)[:30], grpc.StatusCode.INVALID_ARGUMENT, "cannot decode the WAV"),
        (b"fLaC" + bytes(60), grpc.StatusCode.INVALID_ARGUMENT, "cannot decode the FLAC"),
        (audio_bytes(0.01), grpc.StatusCode.INVALID_ARGUMENT, "shorter than the tower's minimum"),
        (
            encoded_audio(np.full(1000, np.nan, np.float32), 16000, "WAV", "FLOAT"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN",
        ),
        (
            audio_bytes(MAX_SECONDS + 1, 8000, "FLAC"),
            grpc.StatusCode.OUT_OF_RANGE,
            f"exceeds the limit of {MAX_SECONDS} s",
        ),
        (
            encoded_audio(np.zeros((1600, 65), np.float32), 16000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "WAV clip has 65 channels (1-64)",
        ),
        (
            audio_bytes(0.5, 500),
            grpc.StatusCode.INVALID_ARGUMENT,
            "WAV sample rate 500 Hz is outside 1000-192000",
        ),
    ],
    ids=[
        "garbage",
        "ogg",
        "truncated-wav",
        "flac-marker-only",
        "too-short",
        "nan",
        "too-long",
        "65-channels",
        "500-hz",
    ],
)
async def test_bad_clips_are_refused_with_a_clear_status(
    stub: audio_pb2_grpc.AudioEncoderStub, data: bytes, code: grpc.StatusCode, message: str
) -> None:
    await assert_item_refused(stub, audio_bytes(0.5), data, code, message)


async def test_a_request_is_held_to_its_sample_budget_from_the_headers(
    stub: audio_pb2_grpc.AudioEncoderStub,
) -> None:
    # 45 s of 192 kHz 8-channel silence: within the clip length limit, a few kB of FLAC, and
    # 69 M samples if decoded (the default budget is 64 M)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await encode(stub, [silent_flac(45, rate=192_000, channels=8)])
    assert raised.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert raised.value.details() == (
        "the request's items hold 69120000 samples (channels x frames); at most 64000000 per "
        "request"
    )


async def test_requests_and_responses_over_4_mib_go_through(
    stub: audio_pb2_grpc.AudioEncoderStub,
) -> None:
    # 8 clips of 45 s: 11.5 MB of 16-bit WAV in, 8 x 2249 frames x 128 x 2 bytes (4.6 MB) out.
    clips = [encoded_audio(speech_like(45.0, 16000, seed=i), 16000) for i in range(8)]
    request = encode_request_to_pb([MediaItem(clip) for clip in clips])
    assert request.ByteSize() > FOUR_MIB
    reply = await stub.Encode(request)
    assert reply.ByteSize() > FOUR_MIB
    # Long clips are encoded in windows whose frames are joined: about 50 per second still.
    assert all(abs(t.shape[0] - frames(45.0)) <= 5 for t in reply.embeddings)
