"""`autoglm serve audio`: the autoglm.v1.AudioEncoder gRPC service."""

from __future__ import annotations

from typing import Any

from transformers import AutoFeatureExtractor

from autoglm.v1 import audio_pb2, audio_pb2_grpc
from bundle.layout import Bundle
from services.audio.config import AudioConfig
from services.audio.model import AudioTower
from services.audio.preprocess import AudioLimits, AudioPreprocessor
from services.common.device import resolve_device
from services.common.encoder_server import MediaEncoder, run_encoder
from services.common.tower import tower_info

# From the descriptor itself: importing audio_pb2 also registers the service with the
# default descriptor pool, which server reflection reads (audio_pb2_grpc alone does not).
SERVICE_NAME = audio_pb2.DESCRIPTOR.services_by_name["AudioEncoder"].full_name


def load(config: AudioConfig) -> MediaEncoder[Any]:
    """The bundle's audio tower, its feature extractor and output RMSNorm, on the device."""
    folder = Bundle.load(config.bundle).audio
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    tower = AudioTower.load(
        folder,
        resolve_device(config.device),
        config.quantization,
        config.int8_threshold,
        batch_size=config.batch_size,
        window_samples=round(config.window_seconds * extractor.sampling_rate),
        use_attention_mask=bool(extractor.return_attention_mask),
    )
    limits = AudioLimits(
        max_bytes=config.max_audio_bytes,
        max_seconds=config.max_audio_seconds,
        min_samples=tower.min_samples,
    )
    preprocess = AudioPreprocessor(extractor, limits)
    tower.warm_up()
    return MediaEncoder(
        decode=preprocess, encode=tower.encode, info=tower_info(tower.model, config)
    )


def run(config: AudioConfig) -> int:
    return run_encoder(
        config,
        service_name=SERVICE_NAME,
        add_servicer=audio_pb2_grpc.add_AudioEncoderServicer_to_server,
        load=lambda: load(config),
    )
