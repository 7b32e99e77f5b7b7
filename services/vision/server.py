"""`autoglm serve vision`: the autoglm.v1.VisionEncoder gRPC service."""

from __future__ import annotations

from typing import Any

from autoglm.v1 import vision_pb2, vision_pb2_grpc
from bundle.layout import Bundle
from services.common.device import resolve_device
from services.common.encoder_server import MediaEncoder, run_encoder
from services.common.tower import tower_info
from services.vision.config import VisionConfig
from services.vision.model import VisionTower
from services.vision.preprocess import ImageLimits, ImagePreprocessor

# From the descriptor itself: importing vision_pb2 also registers the service with the
# default descriptor pool, which server reflection reads (vision_pb2_grpc alone does not).
SERVICE_NAME = vision_pb2.DESCRIPTOR.services_by_name["VisionEncoder"].full_name


def load(config: VisionConfig) -> MediaEncoder[Any]:
    """The bundle's vision tower and its preprocessor, on the configured device."""
    folder = Bundle.load(config.bundle).vision
    limits = ImageLimits(max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels)
    preprocess = ImagePreprocessor.load(folder, limits)
    tower = VisionTower.load(
        folder,
        resolve_device(config.device),
        config.quantization,
        config.int8_threshold,
        config.batch_size,
    )
    tower.warm_up()
    return MediaEncoder(
        decode=preprocess, encode=tower.encode, info=tower_info(tower.model, config)
    )


def run(config: VisionConfig) -> int:
    return run_encoder(
        config,
        service_name=SERVICE_NAME,
        add_servicer=vision_pb2_grpc.add_VisionEncoderServicer_to_server,
        load=lambda: load(config),
    )
