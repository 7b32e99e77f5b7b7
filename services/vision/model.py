"""The vision tower: a Hugging Face image encoder (SiglipVisionModel in the default bundle),
its Linear layers in LLM.int8(), returning one [n_patches, hidden] fp16 embedding per image."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from bundle.glm4v_projector import is_glm4v_checkpoint
from bundle.layout import Bundle
from services.common.device import resolve_device
from services.encoder.pipeline import MediaEncoder
from services.encoder.tower import COMPUTE_DTYPE, load_tower, ready_encoder
from services.vision.config import VisionConfig
from services.vision.glm4v import load_glm4v_encoder
from services.vision.preprocess import ImageLimits, ImagePreprocessor, pixel_budget


class VisionTower:
    def __init__(
        self, model: PreTrainedModel, batch_size: int, output_dtype: torch.dtype = torch.float16
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.output_dtype = output_dtype
        self.device = next(model.parameters()).device

    def warm_up(self) -> None:
        """One full batch of blank images."""
        size = int(self.model.config.image_size)
        self.encode([torch.zeros(3, size, size)] * self.batch_size)

    @torch.inference_mode()
    def encode(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """[3, H, W] pixel tensors -> one [n_patches, hidden] CPU tensor each (the output
        dtype), in order."""
        out: list[torch.Tensor] = []
        for start in range(0, len(pixels), self.batch_size):
            batch = torch.stack(pixels[start : start + self.batch_size])
            hidden = self.model(pixel_values=batch.to(self.device, COMPUTE_DTYPE)).last_hidden_state
            out.extend(hidden.to("cpu", self.output_dtype).unbind(0))
        return out


def load_encoder(config: VisionConfig) -> MediaEncoder[Any]:
    """The bundle's vision tower and its preprocessor, on the configured device: a GLM-4.1V
    checkpoint's own tower (services/vision/glm4v.py), else a Hugging Face image encoder."""
    folder = Bundle.load(config.bundle).vision
    if is_glm4v_checkpoint(folder):
        return load_glm4v_encoder(folder, config)
    limits = ImageLimits(max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels)
    model = load_tower(
        folder, resolve_device(config.device), config.quantization, config.int8_threshold
    )
    tower = VisionTower(model, config.batch_size, getattr(torch, config.output_dtype))
    preprocess = ImagePreprocessor.load(folder, limits)
    return ready_encoder(
        tower, preprocess, config, pixel_budget(preprocess.pixels, config.max_request_image_pixels)
    )
