"""The vision tower: a Hugging Face image encoder (SiglipVisionModel in the default bundle),
its Linear layers in LLM.int8(), returning one [n_patches, hidden] fp16 embedding per image."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from services.common.tower import COMPUTE_DTYPE, load_tower


class VisionTower:
    def __init__(self, model: PreTrainedModel, batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size
        self.device = next(model.parameters()).device

    @classmethod
    def load(
        cls,
        folder: Path,
        device: torch.device,
        quantization: str,
        threshold: float,
        batch_size: int,
    ) -> VisionTower:
        return cls(load_tower(folder, device, quantization, threshold), batch_size)

    def warm_up(self) -> None:
        """One full batch of blank images: start-up fails, not the first request, if the device
        cannot hold the largest batch, and lazy initialisation is paid before SERVING."""
        size = int(self.model.config.image_size)
        self.encode([torch.zeros(3, size, size)] * self.batch_size)

    @torch.inference_mode()
    def encode(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """[3, H, W] pixel tensors -> one [n_patches, hidden] fp16 CPU tensor each, in order."""
        out: list[torch.Tensor] = []
        for start in range(0, len(pixels), self.batch_size):
            batch = torch.stack(pixels[start : start + self.batch_size])
            hidden = self.model(pixel_values=batch.to(self.device, COMPUTE_DTYPE)).last_hidden_state
            out.extend(hidden.to("cpu", torch.float16).unbind(0))
        return out
