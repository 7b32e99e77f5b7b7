"""The gateway's fusion stage: each media item's encoder output -> decoder-width embeddings.

The bundle's ``fusion`` part says which model: a GLM-4.1V checkpoint (config.json model_type
glm4v) brings its own projector, the 2x2 downsample and the patch merger
(bundle/glm4v_projector.py), fed each image's patch states and grid; any other bundle has the
default fusion model (bundle/fusion_model.py). Both run per item, so one item's embeddings never
depend on the other items of the request, and in the configured dtype (float16; float32 for
parity checks), never quantized. Images the vision service already projected (its
``--project-in-service``, for a gateway without a GPU) pass through.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from bundle.fusion_model import FusionModel
from bundle.layout import Bundle
from services.encoder.types import Embedding

DTYPES = {"float16": torch.float16, "float32": torch.float32}


class MediaFusion(Protocol):
    def fuse_image(
        self, states: torch.Tensor, grid_thw: tuple[int, int, int] | None
    ) -> torch.Tensor: ...

    def fuse_audio(self, states: torch.Tensor) -> torch.Tensor: ...


class FusionStage:
    """``model`` None: a text-only bundle (no fusion part); media never reach it, the pipeline
    refuses them first."""

    def __init__(self, model: MediaFusion | None, dtype: torch.dtype) -> None:
        self.model = model
        self.dtype = dtype

    @classmethod
    def for_bundle(cls, bundle: Bundle, device: torch.device, dtype: str) -> FusionStage:
        """The bundle's fusion part, or none for a text-only bundle."""
        if not bundle.has("fusion"):
            return cls(None, DTYPES[dtype])
        return cls.load(bundle.fusion, device, dtype)

    @classmethod
    def load(cls, folder: Path, device: torch.device, dtype: str) -> FusionStage:
        """The fusion model in ``folder`` on ``device`` in ``dtype`` ("float16" or "float32")."""
        if dtype not in DTYPES:
            raise ValueError(f"unknown fusion dtype {dtype!r}; choose from {tuple(DTYPES)}")
        # Imported here: the projector brings transformers' GLM-4.1V modules, which the default
        # fusion (and a fresh process measuring its memory) does without.
        from bundle.glm4v_projector import Glm4vProjector, is_glm4v_checkpoint

        model: MediaFusion
        if is_glm4v_checkpoint(folder):
            model = Glm4vProjector.from_checkpoint(folder, device, DTYPES[dtype])
        else:
            model = FusionModel.from_pretrained(folder, device, DTYPES[dtype])
        return cls(model, DTYPES[dtype])

    @torch.inference_mode()
    def fuse(
        self, vision: Sequence[Embedding], audio: Sequence[Embedding]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One request's encoder outputs -> one [tokens, decoder width] tensor per item, in
        this stage's dtype, in order: images, then clips."""
        if self.model is None:
            if vision or audio:
                raise ValueError("this model has no fusion stage: it takes text only")
            return [], []
        images = [
            (e.tensor if e.projected else self.model.fuse_image(e.tensor, e.grid_thw)).to(
                self.dtype
            )
            for e in vision
        ]
        clips = [self.model.fuse_audio(e.tensor).to(self.dtype) for e in audio]
        return images, clips
